"""The verdict on two runs (or two sweeps): did the second reproduce the first?

Three parts, each a few lines of a short table:

- **settings**: the params, equal but for the overrides the rerun was given;
- **environment**: each difference between the two ``environment.json`` (torch 2.13.0 ->
  2.14.0, blas mkl -> openblas, threads 2 -> 1, the code's diff changed);
- **results**: as the task says a rerun is judged (its ``Task.verdict``, recorded with each
  run as its ``verdict`` tag): ``exact``, every result and every per-step history bit for
  bit (``derivative``; ``minimize`` on the CPU, with its seed), else the first step that
  differs; ``tolerance``, the same within a relative and an absolute tolerance; ``timing``,
  the objective is a time (``matmul``): the two against their measured spreads (IQR), *same
  within noise*, or *slower by 23%* / *faster by 15%* beyond it.

A run reproduced when its settings are equal (but for the overrides) and its results are
equal, or within the noise. The environment's differences explain; they do not decide.

Several reruns of one run (``rerun --repeat N``, :func:`across`) judge a timing against the
spread between processes, which one process's IQR does not see: the original reproduced when
its time lies within the reruns' range, widened by the widest IQR. Any other result must be
reproduced by every rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from mlflow import MlflowClient
from mlflow.entities import Run

from experiments.api import Exact, Timing, Tolerance, verdict_from
from experiments.api import Verdict as Policy
from experiments.names import (
    OBJECTIVE_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    VERDICT_TAG,
    bare_name,
    recorded,
    result,
)
from experiments.reproduce.records import environment_of

# Not results: how long things took (time/...), MLflow's system metrics, how a timing was
# measured (repeats, timing_s).
NOT_RESULTS = ("time/", "system/")
MEASUREMENT = ("repeats", "timing_s")
# Environment fields that differ between any two runs and decide nothing.
INCIDENTAL = ("command", "cwd", "code.diff_bytes", "task.code.diff_bytes")
# Tags that say where a run ran as the task itself saw it (a matmul sets its threads).
ENVIRONMENT_TAGS = ("device.name", "threads", "blas", "cpu.isa", "torch.version", "code.dirty")


@dataclass
class Side:
    """One run of a comparison: the store it is in, the run, where it ran."""

    client: MlflowClient
    run: Run
    environment: Optional[dict[str, Any]] = None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def label(self) -> str:
        return f"{self.run_id} ({self.run.info.run_name})"


# The exit status of a verdict "not reproduced" (rerun, report --compare): 0 when reproduced,
# 1 kept for a refusal, as every command's bad input.
NOT_REPRODUCED_STATUS = 3


@dataclass
class Verdict:
    """The comparison's outcome: ``reproduced``, and the table's lines by part."""

    reproduced: bool
    summary: str  # one line: reproduced, or why not
    settings: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # a sweep's: one line per pair of jobs
    settings_equal: bool = True  # but for the overrides given

    @property
    def status(self) -> int:
        """The exit status that says it: 0 reproduced, 3 (NOT_REPRODUCED_STATUS) not."""
        return 0 if self.reproduced else NOT_REPRODUCED_STATUS

    @property
    def tag(self) -> str:
        return "true" if self.reproduced else "false"

    def text(self, title: str) -> str:
        """The short table, printed and logged (``rerun.txt``)."""
        lines = [title, f"verdict: {self.summary}", ""]
        for part, rows in (
            ("settings", self.settings),
            ("environment", self.environment),
            ("results", self.results),
            ("jobs", self.jobs),
        ):
            if not rows:
                continue
            lines.append(f"{part:<12} {rows[0]}")
            lines.extend(f"{'':<12} {row}" for row in rows[1:])
        return "\n".join(lines) + "\n"


def side(client: MlflowClient, run: Run) -> Side:
    """A run with its ``environment.json`` read (None when it has none)."""
    return Side(client, run, environment_of(client, run.info.run_id))


def is_sweep(run: Run) -> bool:
    return run.data.tags.get(SWEEP_TAG) == "true"


def compare(first: Side, second: Side, overrides: Sequence[str] = ()) -> Verdict:
    """The verdict on ``second`` as a reproduction of ``first``: runs or sweeps alike."""
    if is_sweep(first.run) and is_sweep(second.run):
        return compare_sweeps(first, second, overrides)
    if is_sweep(first.run) != is_sweep(second.run):
        return Verdict(False, "one is a sweep's parent run, the other is not")
    return compare_runs(first, second, overrides)


def compare_runs(first: Side, second: Side, overrides: Sequence[str] = ()) -> Verdict:
    """Settings, environment and results of two runs."""
    overridden = {_key(item) for item in overrides}
    settings, unexpected = settings_rows(first.run, second.run, overridden)
    tagged = tag_rows(first.run, second.run)
    shown = {row.split(":", 1)[0] for row in tagged}  # said once, as the tag says it
    environment = tagged + [
        row
        for row in environment_rows(first.environment, second.environment)
        if row.split(":", 1)[0] not in shown
    ]
    if len(environment) > 1 and "equal" in environment:
        environment.remove("equal")
    if second.run.info.status != "FINISHED" or first.run.info.status != "FINISHED":
        statuses = f"{first.run.info.status} -> {second.run.info.status}"
        error = second.run.data.tags.get("error")
        results = [f"not compared: the runs ended {statuses}" + (f" ({error})" if error else "")]
        equal = first.run.info.status == second.run.info.status
    elif isinstance(policy_of(first.run), Timing):
        equal, results = timing_rows(first.run, second.run)
    else:
        equal, results = history_rows(first, second, policy_of(first.run))
    reproduced = equal and not unexpected
    if reproduced:
        summary = "reproduced"
    elif unexpected:
        summary = f"not reproduced: settings differ ({', '.join(unexpected)})"
    else:
        summary = f"not reproduced: {results[0]}"
    return Verdict(
        reproduced, summary, settings, environment, results, settings_equal=not unexpected
    )


def across(first: Side, reruns: Sequence[Side], verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict on several reruns of ``first`` (each already judged: ``verdicts``).

    A matmul's time is judged against the spread between the reruns' processes: reproduced
    when the original's time lies within their range, widened by the widest IQR of all.
    Anything else (results compared bit for bit, a sweep) reproduced when every rerun did.
    """
    each = [
        f"rerun {n} {s.run_id}: {v.summary}" for n, (s, v) in enumerate(zip(reruns, verdicts), 1)
    ]
    settings_equal = all(v.settings_equal for v in verdicts)
    timed = isinstance(policy_of(first.run), Timing) and not is_sweep(first.run)
    finished = all(s.run.info.status == "FINISHED" for s in (first, *reruns))
    if timed and finished:
        equal, row = spread_row(first.run, [s.run for s in reruns])
        results = [row, *each]
    else:
        equal, results = all(v.reproduced for v in verdicts), each
    reproduced = equal and settings_equal
    done = sum(v.reproduced for v in verdicts)
    if reproduced:
        summary = "reproduced"
    elif not settings_equal:
        summary = verdicts[0].summary
    elif timed and finished:
        summary = f"not reproduced: {results[0]}"
    else:
        summary = f"not reproduced: {done} of {len(verdicts)} reruns did"
    first_verdict = verdicts[0]
    return Verdict(
        reproduced,
        summary,
        first_verdict.settings,
        first_verdict.environment,
        results,
        settings_equal=settings_equal,
    )


def policy_of(run: Run) -> Policy:
    """How a rerun of ``run`` is judged: its ``verdict`` tag; for a run recorded before the
    tag, its task's ``Task.verdict`` where the task is installed here; else exact."""
    recorded_policy = verdict_from(run.data.tags.get(VERDICT_TAG))
    if recorded_policy is not None:
        return recorded_policy
    from experiments.errors import ConfigError
    from experiments.tasks import registry

    try:
        task = registry.find(run.data.tags.get("task", ""))
    except ConfigError:
        task = None
    return task.verdict if task is not None else Exact()


def timed_keys(run: Run) -> tuple[str, str]:
    """A timed run's time (its objective) and its measured spread, as metric keys."""
    policy = policy_of(run)
    spread = result(policy.spread) if isinstance(policy, Timing) else result("time_iqr_ms")
    objective = run.data.tags.get(OBJECTIVE_TAG)
    if objective is None:  # recorded before the tag: its task's, where installed here
        from experiments.tasks import registry

        task = registry.find(run.data.tags.get("task", ""))
        objective = task.objective_key if task is not None else "objective/time_ms"
    return objective, spread


def spread_row(first: Run, reruns: Sequence[Run]) -> tuple[bool, str]:
    """A time against its reruns' range (between processes), widened by the widest spread
    (IQR) of all: within it, or slower/faster than the reruns' median by how much."""
    time_key, spread_key = timed_keys(first)
    time_a = recorded(first.data.metrics, time_key)
    times = [recorded(run.data.metrics, time_key) for run in reruns]
    if time_a is None or None in times:
        return False, f"not compared: {time_key} is missing"
    spreads = [recorded(run.data.metrics, spread_key) for run in (first, *reruns)]
    widest = max((s for s in spreads if s is not None), default=0.0)
    low, high = min(times), max(times)
    measured = (
        f"{time_a:.4g} ms against {len(times)} reruns' {low:.4g}-{high:.4g} ms, "
        f"widest spread (IQR) {widest:.2g} ms"
    )
    if low - widest <= time_a <= high + widest:
        return True, f"same within the reruns' spread: {measured}"
    middle = sorted(times)[len(times) // 2]
    change = (middle - time_a) / time_a
    word = "slower" if change > 0 else "faster"
    return False, f"{word} by {abs(change):.0%} beyond the reruns' spread: {measured}"


def compare_sweeps(first: Side, second: Side, overrides: Sequence[str] = ()) -> Verdict:
    """Each job of one sweep against the same job of the other (by job number)."""
    jobs_a, jobs_b = _jobs(first), _jobs(second)
    rows: list[str] = []
    settings = [f"{len(jobs_a)} jobs -> {len(jobs_b)} jobs"] if len(jobs_a) != len(jobs_b) else []
    all_equal = not settings
    environment: list[str] = []
    for number in sorted(set(jobs_a) | set(jobs_b), key=_job_order):
        a, b = jobs_a.get(number), jobs_b.get(number)
        if a is None or b is None:
            rows.append(f"job {number}: only in the {'second' if a is None else 'first'} sweep")
            all_equal = False
            continue
        verdict = compare_runs(side(first.client, a), side(second.client, b), overrides)
        all_equal &= verdict.reproduced
        rows.append(f"job {number} {b.info.run_name}: {verdict.summary}")
        environment = environment or verdict.environment  # where the first pair ran
    count = sum(row.endswith(": reproduced") for row in rows)
    summary = "reproduced" if all_equal else f"not reproduced: {count} of {len(rows)} jobs did"
    return Verdict(all_equal, summary, settings, environment, jobs=rows)


def _jobs(parent: Side) -> dict[str, Run]:
    """A sweep's jobs by their job number (the last part of their output directory)."""
    runs = parent.client.search_runs(
        [parent.run.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'",
        max_results=5000,
    )
    jobs: dict[str, Run] = {}
    for run in runs:
        directory = run.data.tags.get("output_dir", "")
        number = Path(directory).name if directory else run.info.run_id
        # A requeued job leaves an earlier attempt: the latest one stands for the job.
        if number not in jobs or run.info.start_time > jobs[number].info.start_time:
            jobs[number] = run
    return jobs


def _job_order(number: str) -> tuple[int, str]:
    return (int(number), "") if number.isdigit() else (1 << 30, number)


def settings_rows(first: Run, second: Run, overridden: set[str]) -> tuple[list[str], list[str]]:
    """Each param that differs, marked when an override asked for it; and the others' keys."""
    a, b = first.data.params, second.data.params
    rows, unexpected = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        given = key in overridden or any(key.startswith(f"{name}.") for name in overridden)
        rows.append(
            f"{key}: {_shown(a.get(key))} -> {_shown(b.get(key))}"
            + (" (override)" if given else "")
        )
        if not given:
            unexpected.append(key)
    return rows or ["equal"], unexpected


def tag_rows(first: Run, second: Run) -> list[str]:
    """The environment's tags that differ (:data:`ENVIRONMENT_TAGS`)."""
    a, b = first.data.tags, second.data.tags
    return [
        f"{key}: {_shown(a.get(key))} -> {_shown(b.get(key))}"
        for key in ENVIRONMENT_TAGS
        if a.get(key) != b.get(key) and key in a and key in b
    ]


def environment_rows(
    first: Optional[dict[str, Any]], second: Optional[dict[str, Any]]
) -> list[str]:
    """Each difference between where the two ran."""
    if first is None or second is None:
        which = (
            "either run"
            if first is None and second is None
            else ("the first run" if first is None else "the second run")
        )
        return [f"not recorded for {which}"]
    a, b = _flat(first), _flat(second)
    rows = []
    for key in sorted(set(a) | set(b)):
        if key in INCIDENTAL or key.startswith(INCIDENTAL) or a.get(key) == b.get(key):
            continue
        if key == "code.diff_sha256":
            rows.append("code: the diff changed")
            continue
        if key == "task.code.diff_sha256":
            rows.append("task code: the diff changed")
            continue
        rows.append(f"{key}: {_shown(a.get(key))} -> {_shown(b.get(key))}")
    return rows or ["equal"]


def history_rows(
    first: Side, second: Side, policy: Optional[Policy] = None
) -> tuple[bool, list[str]]:
    """Every result and per-step history, bit for bit (or within a :class:`Tolerance`).

    A result is matched by its bare name, so a run recorded before its result's name
    changed (``result/loss``, ``loss``) is compared with one recording ``objective/loss``;
    the rows name a metric as the second run has it.
    """
    tolerance = policy if isinstance(policy, Tolerance) else None
    keys_a, keys_b = _result_keys(first.run), _result_keys(second.run)
    only = [(keys_a[name], "first") for name in keys_a.keys() - keys_b.keys()]
    only += [(keys_b[name], "second") for name in keys_b.keys() - keys_a.keys()]
    rows = [f"{key}: only in the {which} run" for key, which in sorted(only)]
    points, firsts = 0, []
    for name in sorted(keys_a.keys() & keys_b.keys(), key=keys_b.__getitem__):
        key = keys_b[name]
        a = _history(first.client, first.run_id, keys_a[name])
        b = _history(second.client, second.run_id, key)
        points += min(len(a), len(b))
        differs = _first_difference(a, b, tolerance)
        if differs is not None:  # a per-step history names the step better than a result
            firsts.append((min(len(a), len(b)) <= 1, differs[0], key, differs[1]))
    if firsts:
        _, step, key, detail = min(firsts)
        rows.insert(0, f"{key} differs first at step {step}: {detail}")
        more = len(firsts) - 1
        if more:
            rows.append(f"and {more} more metric{'s' if more > 1 else ''} differ")
    equal = not rows
    if equal:
        keys = len(keys_a)
        how = (
            f"equal within rel={tolerance.rel:g} abs={tolerance.abs:g}"
            if tolerance is not None
            else "bit-for-bit equal"
        )
        rows = [f"{how}: {keys} metric{'s' if keys != 1 else ''}, {points} points"]
    device = first.run.data.params.get("device", "")
    if (
        not equal
        and device.startswith("cuda")
        and first.run.data.params.get("deterministic") != "True"
    ):
        rows.append("on a GPU without deterministic=true, kernels may sum in another order")
    return equal, rows


def timing_rows(first: Run, second: Run) -> tuple[bool, list[str]]:
    """Two times against their spreads: within noise, or slower/faster by how much."""
    time_key, spread_key = timed_keys(first)
    a, b = first.data.metrics, second.data.metrics  # either may hold a legacy name
    time_a, time_b = recorded(a, time_key), recorded(b, time_key)
    if time_a is None or time_b is None:
        return False, [f"not compared: {time_key} is missing"]
    iqr_a, iqr_b = recorded(a, spread_key), recorded(b, spread_key)
    noise = max(iqr_a or 0.0, iqr_b or 0.0)
    change = (time_b - time_a) / time_a
    measured = (
        f"{time_a:.4g} ms -> {time_b:.4g} ms ({change:+.1%}); spread (IQR) "
        f"{_or_nan(iqr_a):.2g} / {_or_nan(iqr_b):.2g} ms"
    )
    if abs(time_b - time_a) <= noise:
        return True, [f"same within noise: {measured}"]
    word = "slower" if change > 0 else "faster"
    return False, [f"{word} by {abs(change):.0%} beyond the noise: {measured}"]


def _is_result(key: str) -> bool:
    return not key.startswith(NOT_RESULTS) and key not in MEASUREMENT


def _result_keys(run: Run) -> dict[str, str]:
    """A run's results to compare: bare name (``loss``; else the key) -> metric key."""
    return {bare_name(key) or key: key for key in run.data.metrics if _is_result(key)}


def _or_nan(value: Optional[float]) -> float:
    return math.nan if value is None else value


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _first_difference(
    a: list[tuple[int, float]],
    b: list[tuple[int, float]],
    tolerance: Optional[Tolerance] = None,
) -> Optional[tuple[int, str]]:
    """The first step where two histories differ, and how; None when equal."""
    for (step_a, value_a), (step_b, value_b) in zip(a, b):
        if step_a != step_b:
            return min(step_a, step_b), f"recorded at step {step_a} vs {step_b}"
        if not _same(value_a, value_b, tolerance):
            return step_a, f"{value_a!r} -> {value_b!r}"
    if len(a) != len(b):
        longer, shorter = (a, b) if len(a) > len(b) else (b, a)
        step = longer[len(shorter)][0]
        return step, f"{len(a)} points -> {len(b)} points, equal on the steps both have"
    return None


def _same(a: float, b: float, tolerance: Optional[Tolerance] = None) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if tolerance is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= tolerance.abs + tolerance.rel * abs(a)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        flat = {}  # a list of libraries (threadpools): each named by its file, not its place
        for index, item in enumerate(tree):
            name = item.get("library") or item.get("name") or str(index)
            flat.update(_flat(item, f"{prefix}[{name}]"))
        return flat
    return {prefix: tree}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
