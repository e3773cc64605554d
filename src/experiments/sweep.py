"""Sweeps: one MLflow parent run per multirun, a child run per job, and a summary table.

Hydra calls :class:`SweepCallback` in the process that launches the jobs. It opens the
parent run and writes its id into the sweep directory, where every job finds it, in this
process, in a joblib worker (which may outlive one sweep) or on another host. Each job
writes its outcome (status, run id, objective, reason) into its own output directory, so
the summary covers jobs that ran in other processes and jobs that never got as far as an
MLflow run (a bad value in the sweep). Hydra does not call ``on_multirun_end`` when a job
failed, so the command line also calls :func:`finish`, which is safe to call twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import journal, liveness, signals, uris
from experiments.errors import ConfigError, RunFailure

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"
SWEPT_FILE = "swept_keys.json"  # the keys whose values vary across the sweep's jobs
OUTCOME_FILE = "outcome.json"
STOPPED_FILE = "stopped"  # written when a signal stops the sweep: jobs not started stay so
LOST_JOB = "lost: the job's process ended without reporting (killed, or out of memory?)"
REPORT_DIR = "report"  # the sweep's report: in the sweep directory and in the parent run
REPORT_WAIT_S = 120.0  # how long a sweep's end waits for its report
STOP_WAIT_S = 10.0  # how long an interrupted sweep waits for its running jobs to close
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag's value
STATUSES = ("FINISHED", "FAILED", "KILLED", "UNSYNCED", "SKIPPED", "RUNNING")


@dataclass
class Outcome:
    """What became of one job of a sweep."""

    job: int
    overrides: list[str]
    status: str  # RUNNING, then FINISHED, FAILED, KILLED, UNSYNCED or SKIPPED
    run_id: Optional[str] = None
    objective: Optional[float] = None
    reason: Optional[str] = None
    host: Optional[str] = None  # where the job's process runs, and its pid
    pid: Optional[int] = None
    directory: Optional[str] = None  # the job's output directory (set when read back)

    def write(self, output_dir: str | Path) -> None:
        """Save next to the job's other files, for the launching process to collect."""
        target = Path(output_dir, OUTCOME_FILE)
        fields = {k: v for k, v in asdict(self).items() if k != "directory"}
        temporary = target.with_name(f".{OUTCOME_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(fields), encoding="utf-8")
        os.replace(temporary, target)

    def gone(self) -> bool:
        """Whether this RUNNING job's process has ended (as far as this host can tell)."""
        if self.host != liveness.host() or self.pid is None:
            return False
        return self.pid != os.getpid() and not liveness.process_alive(self.pid)


def started(job: int, overrides: list[str], output_dir: str | Path) -> Outcome:
    """Mark a job RUNNING in its directory (with its process), and return its outcome."""
    outcome = Outcome(job, overrides, "RUNNING", host=liveness.host(), pid=os.getpid())
    outcome.write(output_dir)
    outcome.status = "FAILED"  # until the job says otherwise
    return outcome


def read_outcomes(sweep_dir: str | Path) -> list[Outcome]:
    """Every outcome written under a sweep directory, in job order."""
    found = []
    for path in Path(sweep_dir).glob(f"*/{OUTCOME_FILE}"):
        try:
            outcome = Outcome(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            log.warning("unreadable job outcome %s", path)
            continue
        outcome.directory = str(path.parent)
        found.append(outcome)
    return sorted(found, key=lambda outcome: outcome.job)


@dataclass
class Parent:
    """The sweep's parent run, as a job finds it in the sweep directory."""

    run_id: Optional[str] = None  # None when the sweep is kept offline
    journal_id: Optional[str] = None
    swept: Optional[list[str]] = None  # the keys the sweep varies, in command-line order

    def child_name(self, overrides: list[str]) -> Optional[str]:
        """A job's run name: what varies in the sweep (``optim=adam lr=0.1``).

        What is fixed for the whole sweep is in the parent's name. None when this sweep
        varies nothing the job's overrides show (the runner's default name then).
        """
        if not self.swept:
            return None
        values = {o.key_or_group: item.split("=", 1)[1] for o, item in _parsed(overrides)}
        shown = [key for key in self.swept if key in values]
        if not shown:
            return None
        ends = [key.rsplit(".", 1)[-1] for key in shown]
        # two keys ending alike (task.init.x, task.at.x) keep their whole paths
        labels = [end if ends.count(end) == 1 else key for key, end in zip(shown, ends)]
        return " ".join(f"{label}={values[key]}" for label, key in zip(labels, shown))[:250]


def swept_keys(overrides: list[str], sweeper_params: Any) -> list[str]:
    """The keys a sweep varies: its command line's sweeps (``optim.lr=0.1,0.01``), then
    those of ``hydra.sweeper.params`` the command line did not replace with one value."""
    given = _parsed(overrides)
    swept = [o.key_or_group for o, _ in given if o.is_sweep_override()]
    named = {o.key_or_group for o, _ in given}
    preset = [f"{key}={value}" for key, value in dict(sweeper_params or {}).items()]
    swept += [
        o.key_or_group
        for o, _ in _parsed(preset)
        if o.key_or_group not in named and o.is_sweep_override()
    ]
    return swept


def _parsed(items: list[str]) -> list[tuple[Any, str]]:
    """Each override Hydra's grammar parses, with its text; the others are left out."""
    parser = OverridesParser.create()
    found = []
    for item in items:
        try:
            found.append((parser.parse_override(item), item))
        except HydraException:
            continue
    return found


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The id of the parent run of the sweep writing into ``sweep_dir``, if it has one."""
    try:
        return Path(sweep_dir, PARENT_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def parent_of(sweep_dir: str | Path) -> Parent:
    """The parent of a job of the sweep in ``sweep_dir``.

    Raises:
        signals.Interrupted: the sweep was stopped by a signal before this job started.
    """
    stopped = Path(sweep_dir, STOPPED_FILE)
    if stopped.exists():
        reason = stopped.read_text(encoding="utf-8").strip() or "the sweep was stopped"
        raise signals.Interrupted(signal.SIGTERM, f"not started: {reason}")
    try:
        journal_id = journal.read_header(Path(sweep_dir, journal.NAME)).journal_id
    except journal.JournalError:
        journal_id = None
    try:
        swept = json.loads(Path(sweep_dir, SWEPT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        swept = None
    return Parent(parent_run_id(sweep_dir), journal_id, swept)


def active() -> bool:
    """Whether this process has opened a sweep that is not finished yet."""
    return bool(_active)


@dataclass
class Finished:
    """A sweep this process closed: where, its jobs, and whether its parent is all recorded."""

    directory: Path
    outcomes: list[Outcome]
    parent_recorded: bool


def finished() -> list[Finished]:
    """Every sweep this process finished, in order."""
    return list(_finished)


@dataclass
class _Sweep:
    recording: Any  # live.LiveRun of the parent run
    store: Any  # live.Store, None when offline
    directory: Path
    name: str
    objective: Optional[str] = None  # the metric the jobs' objective is (the task's OBJECTIVE)
    pending: list[tuple[Outcome, Path, Any]] = field(default_factory=list)


_active: list[_Sweep] = []
_finished: list[Finished] = []
_set_by_us: list[str] = []  # environment variables a sweep set, cleared when it finishes


class SweepCallback(Callback):
    """Opens the sweep's parent run before any job starts and closes it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish()


def start(config: DictConfig) -> str | None:
    """Open the parent run of the sweep ``config`` describes and export its id to jobs.

    The parent is recorded like any run: a journal in the sweep directory, uploaded while
    the sweep goes on, with its own heartbeat.

    Returns:
        The parent run's id (None when the sweep is kept offline).
    """
    from experiments import live, runner  # the runner imports torch; only a sweep needs it

    tracking = config.tracking
    hydra_cfg = config.hydra  # HydraConfig is not set yet when a multirun starts
    overrides = [uris.scrub(item) for item in hydra_cfg.overrides.task]  # no password
    name = sweep_name(hydra_cfg.runtime.choices.get("experiment"), overrides)
    experiment = tracking.experiment or config.task.name
    directory = Path(hydra_cfg.sweep.dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # the launcher fails on it next, and the command says so in one line
    header = runner.journal_header(tracking, experiment, name, directory)
    tags = {
        "sweep": "true",
        "sweep.dir": str(hydra_cfg.sweep.dir),
        "overrides": " ".join(overrides),
    }
    store = runner.store_of(tracking)
    recording = live.open_run(directory, header, tags, store, runner.live_settings(tracking))
    objective = getattr(runner.TASKS.get(config.task.name), "OBJECTIVE", None)
    # Active from here: a signal during the start-up below ends the parent KILLED (finish).
    _active.append(_Sweep(recording, store, directory, name, objective))
    try:
        runner.prepare(config.task.name)  # the jobs' start-up, while the store opens
        recording.started()  # a store that cannot take the parent stops the sweep here
    except BaseException:
        if recording.discarded:  # no parent run exists: nothing to close
            _active.pop()
        raise
    _share_cores(hydra_cfg.launcher)
    swept = swept_keys(overrides, hydra_cfg.sweeper.get("params"))
    Path(directory, SWEPT_FILE).write_text(json.dumps(swept), encoding="utf-8")
    if recording.run_id is not None:
        Path(directory, PARENT_FILE).write_text(recording.run_id, encoding="utf-8")
    return recording.run_id


def _share_cores(launcher: DictConfig) -> None:
    """Give each parallel worker its share of the cores, unless the user chose already.

    Every torch process otherwise starts one thread per core: n workers on n cores then
    fight over them, and OpenMP's spinning threads make the sweep slower than running its
    jobs one after another. Workers start after this, so they inherit the setting.
    """
    workers = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if workers is None or "OMP_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    workers = cores if workers < 1 else workers  # joblib's -1: one worker per core
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))
    _set_by_us.append("OMP_NUM_THREADS")


def sweep_name(experiment: str | None, overrides: list[str]) -> str:
    """The parent run's name: the named sweep, or the command line's overrides."""
    if experiment:
        return f"sweep {experiment}"
    return " ".join(["sweep", *overrides])[:250]


def finish(interrupted: bool = False, error: str | None = None) -> list[Outcome]:
    """Close the active sweep's parent run, print and record the summary of its jobs.

    The parent ends FINISHED when every job finished (or was skipped as already done),
    FAILED when any failed, left no outcome, or the sweep stopped with ``error``, and
    KILLED when the sweep was interrupted: then the jobs still running in other processes
    of this host are sent SIGTERM, jobs not started yet will not start, and the runs of
    jobs whose process is gone are closed KILLED too, with what their journals hold. The
    runs that skipped jobs point to are listed in the parent's ``sweep.reused_runs`` tag,
    so a report of the sweep covers them too.
    """
    if not _active:
        return []
    sweep = _active.pop()
    while _set_by_us:
        os.environ.pop(_set_by_us.pop(), None)
    _settle(sweep)
    if interrupted:
        _stop_jobs(sweep, error or "the sweep was interrupted")
    else:
        _close_abandoned(sweep, "FAILED", LOST_JOB)
    outcomes = read_outcomes(sweep.directory)
    failed = [outcome for outcome in outcomes if outcome.status == "FAILED"]
    reason = (
        f"{len(failed)} of {len(outcomes)} jobs failed: {failed[0].reason}" if failed else error
    )
    if not outcomes:
        reason = reason or "no job ran"
    table = summary_table(outcomes, sweep.objective)
    summary = f"Sweep {sweep.name!r}: {counts_line(outcomes)}\n{table}"
    best = best_outcome(outcomes)
    if best is not None and sweep.objective is not None:
        summary += (
            f"\nbest {sweep.objective}: {_number(best.objective)} (job {best.job}: "
            f"{' '.join(best.overrides)}), run {best.run_id}"
        )
    if any(outcome.run_id is not None for outcome in outcomes) and not interrupted:
        _report(sweep)  # (no job recorded a run: nothing to compare)
    if outcomes:
        print(f"\n{summary}", flush=True)
        where = review_line(sweep)
        if where:
            print(where, flush=True)
    reused = [o.run_id for o in outcomes if o.status == "SKIPPED" and o.run_id is not None]
    tags = {"jobs": counts_line(outcomes)}
    if reused:
        tags["sweep.reused_runs"] = ",".join(reused)[:MAX_TAG_LENGTH]
    if best is not None and sweep.objective is not None:
        tags[BEST_RUN_TAG] = str(best.run_id)
        sweep.recording.recorder.log_metrics({best_metric(sweep.objective): best.objective})
    status = "KILLED" if interrupted else "FAILED" if reason else "FINISHED"
    recorder = sweep.recording.recorder
    recorder.log_text(summary + "\n", "summary.txt")
    recorder.set_tags(tags)
    delivery = sweep.recording.close(
        status, reason[:MAX_TAG_LENGTH] if reason else None, hurry=interrupted
    )
    if not delivery.recorded and not delivery.offline:
        from experiments.runner import not_recorded_line

        log.warning("the sweep's parent run: %s", not_recorded_line(delivery))
    _finished.append(Finished(sweep.directory, outcomes, delivery.recorded or delivery.offline))
    return outcomes


BEST_RUN_TAG = "best_run"  # the parent's tag: the run that reached the best objective


def best_metric(objective: str) -> str:
    """The parent's metric holding the best objective: ``best/loss`` for ``result/loss``."""
    return "best/" + objective.rsplit("/", 1)[-1]


def _report(sweep: _Sweep) -> None:
    """The sweep's comparison report, in ``<sweep dir>/report`` and the parent's ``report/``."""
    from experiments import live
    from experiments.cli import one_line  # the command line's module imports this one
    from experiments.recorder.client import RecorderGone

    run_id = sweep.recording.run_id
    if sweep.store is None or run_id is None:
        return  # kept offline: python -m experiments.report --parent makes it after sync
    try:
        reply = live.report(sweep.store, run_id, sweep.directory / REPORT_DIR, REPORT_WAIT_S)
    except (RecorderGone, RunFailure, ConfigError) as failure:
        log.warning(
            "the sweep's report was not made: %s; make it with: python -m experiments.report "
            "--parent %s",
            one_line(failure),
            run_id,
        )
        return
    figures = len(reply.get("figures", []))
    log.info(
        "report: %d figure%s logged into the parent run under %s/ in %.2f s",
        figures,
        "" if figures == 1 else "s",
        REPORT_DIR,
        reply.get("seconds", 0.0),
    )


def best_outcome(outcomes: list[Outcome]) -> Optional[Outcome]:
    """The job with the lowest finite objective (sweepers minimise it), done or reused."""
    done = [
        outcome
        for outcome in outcomes
        if outcome.status in ("FINISHED", "SKIPPED")
        and outcome.run_id is not None
        and outcome.objective is not None
        and math.isfinite(outcome.objective)
    ]
    return min(done, key=lambda outcome: outcome.objective) if done else None


def review_line(sweep: _Sweep) -> Optional[str]:
    """Where to look at the sweep: the parent run's page in the MLflow UI."""
    run_id, experiment_id = sweep.recording.run_id, sweep.recording.experiment_id
    if sweep.store is None or run_id is None or experiment_id is None:
        return None
    uri = uris.redact(sweep.store.uri)
    # MLflow 3's UI opens in its GenAI mode unless told otherwise; runs are "machine_learning"
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"Review it at {uri.rstrip('/')}/{page}"
    return f"Review it with: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"


def pending(outcome: Outcome, output_dir: str | Path, delivery: Any) -> None:
    """A job of this process whose last records are still on their way to the store."""
    if _active:
        _active[-1].pending.append((outcome, Path(output_dir), delivery))


def _settle(sweep: _Sweep) -> None:
    """Wait for the deliveries of the jobs that did not wait; mark those that failed."""
    from experiments.runner import not_recorded_line

    for outcome, directory, delivery in sweep.pending:
        done = delivery.wait()
        if not done.recorded:
            outcome.status, outcome.reason = "UNSYNCED", not_recorded_line(done)
            outcome.write(directory)
            log.warning("job %s: %s", outcome.job, outcome.reason)
    sweep.pending.clear()


def status_of(result: Any) -> str:
    """A job's status in the summary, from the runner's ``Result``."""
    if result.skipped:
        return "SKIPPED"
    if not result.recorded and not result.delivery.offline:
        return "UNSYNCED"
    return "FINISHED"


def _stop_jobs(sweep: _Sweep, reason: str) -> None:
    """Stop the running jobs of an interrupted sweep that run on this host; close the rest.

    Jobs still starting see the ``stopped`` file and do not start. Running jobs in other
    processes of this host (joblib workers, submitit_local jobs) get SIGTERM and end their
    runs KILLED themselves; the runs of jobs whose process is gone are closed here.
    """
    Path(sweep.directory, STOPPED_FILE).write_text(reason, encoding="utf-8")
    for outcome in read_outcomes(sweep.directory):
        if outcome.status == "RUNNING" and outcome.host == liveness.host():
            if outcome.pid not in (None, os.getpid()) and not outcome.gone():
                try:
                    os.kill(outcome.pid, signal.SIGTERM)
                except OSError:
                    pass
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and any(
        o.status == "RUNNING" and o.host == liveness.host() and not o.gone()
        for o in read_outcomes(sweep.directory)
    ):
        time.sleep(0.1)
    _close_abandoned(sweep, "KILLED", reason, this_host_only=True)


def _close_abandoned(sweep: _Sweep, status: str, reason: str, this_host_only: bool = False) -> None:
    """Close what jobs whose process is gone left open: their runs and their outcomes.

    Args:
        this_host_only: leave the journals of other hosts alone (after an interruption,
            jobs on a cluster go on without the launching process).
    """
    parent_journal = sweep.recording.journal
    for path in journal.find([sweep.directory]):
        if path == parent_journal or journal.ended(path) or journal.held(path) is not False:
            continue
        if this_host_only and journal.read_header(path).host != liveness.host():
            continue
        _close_run(sweep, path, status, reason)
    for outcome in read_outcomes(sweep.directory):
        if outcome.status == "RUNNING" and outcome.gone():
            outcome.status, outcome.reason = status, reason
            assert outcome.directory is not None
            outcome.write(outcome.directory)


def _close_run(sweep: _Sweep, path: Path, status: str, reason: str) -> None:
    """A job's process is gone without closing its run: upload what it recorded, end it."""
    from experiments import live
    from experiments.recorder.client import RecorderGone

    if sweep.store is None:
        return  # kept offline: sync closes it later
    try:
        run_id = live.adopt(path, sweep.store, status, reason)
    except (RecorderGone, RunFailure, ConfigError) as failure:
        log.warning("could not close the run of %s: %s (sync will)", path, failure)
        return
    outcome_file = Path(path.parent, OUTCOME_FILE)
    if outcome_file.exists():
        outcome = Outcome(**json.loads(outcome_file.read_text(encoding="utf-8")))
        if outcome.status == "RUNNING":
            outcome.run_id = run_id
            outcome.write(path.parent)


def counts_line(outcomes: list[Outcome]) -> str:
    """E.g. ``20 jobs: 18 finished, 1 failed, 1 skipped``."""
    parts = [f"{len(outcomes)} job" + ("" if len(outcomes) == 1 else "s")]
    details = []
    for status in STATUSES:
        count = sum(outcome.status == status for outcome in outcomes)
        if count:
            details.append(f"{count} {status.lower()}")
    return parts[0] + (": " + ", ".join(details) if details else "")


def summary_table(outcomes: list[Outcome], objective: Optional[str] = None) -> str:
    """An aligned text table: job, overrides, status, objective, and the reason of failures.

    Args:
        objective: the metric the objective column holds (e.g. ``loss``), for its heading.
    """
    rows = [("job", "overrides", "status", objective or "objective", "reason / run")]
    for outcome in outcomes:
        value = "" if outcome.objective is None else _number(outcome.objective)
        note = outcome.reason or (outcome.run_id or "")
        rows.append((str(outcome.job), " ".join(outcome.overrides), outcome.status, value, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)
