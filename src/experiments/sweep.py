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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"
OUTCOME_FILE = "outcome.json"
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag's value


@dataclass
class Outcome:
    """What became of one job of a sweep."""

    job: int
    overrides: list[str]
    status: str  # FINISHED, FAILED or SKIPPED
    run_id: Optional[str] = None
    objective: Optional[float] = None
    reason: Optional[str] = None

    def write(self, output_dir: str | Path) -> None:
        """Save next to the job's other files, for the launching process to collect."""
        Path(output_dir, OUTCOME_FILE).write_text(json.dumps(asdict(self)), encoding="utf-8")


def read_outcomes(sweep_dir: str | Path) -> list[Outcome]:
    """Every outcome written under a sweep directory, in job order."""
    found = []
    for path in Path(sweep_dir).glob(f"*/{OUTCOME_FILE}"):
        try:
            found.append(Outcome(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            log.warning("unreadable job outcome %s", path)
    return sorted(found, key=lambda outcome: outcome.job)


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The id of the parent run of the sweep writing into ``sweep_dir``, if it has one."""
    try:
        return Path(sweep_dir, PARENT_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def active() -> bool:
    """Whether this process has opened a sweep that is not finished yet."""
    return bool(_active)


@dataclass
class _Sweep:
    tracker: Any
    run_id: str
    directory: Path
    name: str


_active: list[_Sweep] = []
_set_by_us: list[str] = []  # environment variables a sweep set, cleared when it finishes


class SweepCallback(Callback):
    """Opens the sweep's parent run before any job starts and closes it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish()


def start(config: DictConfig) -> str:
    """Open the parent run of the sweep ``config`` describes and export its id to jobs."""
    from experiments import runner  # the runner imports torch; only a sweep needs it here

    tracking = config.tracking
    tracker = runner.tracker_for(tracking.uri, tracking.timeout_s)
    experiment = tracker.experiment_id(tracking.experiment or config.task.name)
    hydra_cfg = config.hydra  # HydraConfig is not set yet when a multirun starts
    overrides = list(hydra_cfg.overrides.task)
    name = sweep_name(hydra_cfg.runtime.choices.get("experiment"), overrides)
    run = tracker.client.create_run(
        experiment,
        run_name=name,
        tags={
            "sweep": "true",
            "sweep.dir": str(hydra_cfg.sweep.dir),
            "overrides": " ".join(overrides),
        },
    )
    _share_cores(hydra_cfg.launcher)
    directory = Path(hydra_cfg.sweep.dir)
    directory.mkdir(parents=True, exist_ok=True)
    Path(directory, PARENT_FILE).write_text(run.info.run_id, encoding="utf-8")
    _active.append(_Sweep(tracker, run.info.run_id, directory, name))
    return run.info.run_id


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
    KILLED when the sweep was interrupted. The runs that skipped jobs point to are listed
    in the parent's ``sweep.reused_runs`` tag, so a report of the sweep covers them too.
    """
    if not _active:
        return []
    sweep = _active.pop()
    while _set_by_us:
        os.environ.pop(_set_by_us.pop(), None)
    outcomes = read_outcomes(sweep.directory)
    failed = [outcome for outcome in outcomes if outcome.status == "FAILED"]
    reason = (
        f"{len(failed)} of {len(outcomes)} jobs failed: {failed[0].reason}" if failed else error
    )
    if not outcomes:
        reason = reason or "no job ran"
    summary = f"Sweep {sweep.name!r}: {counts_line(outcomes)}\n{summary_table(outcomes)}"
    if outcomes:
        print(f"\n{summary}", flush=True)
    reused = [o.run_id for o in outcomes if o.status == "SKIPPED" and o.run_id is not None]
    tags = {"jobs": counts_line(outcomes)}
    if reused:
        tags["sweep.reused_runs"] = ",".join(reused)[:MAX_TAG_LENGTH]
    if reason is not None and not interrupted:
        tags["error"] = reason[:MAX_TAG_LENGTH]
    status = RunStatus.KILLED if interrupted else RunStatus.FAILED if reason else RunStatus.FINISHED
    client = sweep.tracker.client
    try:
        client.log_text(sweep.run_id, summary + "\n", "summary.txt")
        for key, value in tags.items():
            client.set_tag(sweep.run_id, key, value)
    finally:
        client.set_terminated(sweep.run_id, status=RunStatus.to_string(status))
    return outcomes


def counts_line(outcomes: list[Outcome]) -> str:
    """E.g. ``20 jobs: 18 finished, 1 failed, 1 skipped``."""
    parts = [f"{len(outcomes)} job" + ("" if len(outcomes) == 1 else "s")]
    details = []
    for status in ("FINISHED", "FAILED", "SKIPPED"):
        count = sum(outcome.status == status for outcome in outcomes)
        if count:
            details.append(f"{count} {status.lower()}")
    return parts[0] + (": " + ", ".join(details) if details else "")


def summary_table(outcomes: list[Outcome]) -> str:
    """An aligned text table: job, overrides, status, objective, and the reason of failures."""
    rows = [("job", "overrides", "status", "objective", "reason / run")]
    for outcome in outcomes:
        objective = "" if outcome.objective is None else _number(outcome.objective)
        note = outcome.reason or (outcome.run_id or "")
        rows.append(
            (str(outcome.job), " ".join(outcome.overrides), outcome.status, objective, note)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)
