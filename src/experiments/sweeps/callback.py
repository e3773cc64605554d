"""A sweep's life in the launching process: its parent run opened, then closed with a summary.

Hydra calls :class:`SweepCallback` in the process that launches the jobs. It opens the
parent run and writes its id into the sweep directory, where every job finds it, in this
process, in a joblib worker (which may outlive one sweep) or on another host
(:mod:`.parent`). Each job writes its outcome into its own directory (:mod:`.outcomes`).
Hydra does not call ``on_multirun_end`` when a job failed, so the command line also calls
:func:`finish`, which is safe to call twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments import process, record, signals, tasks
from experiments.config import task_name_of
from experiments.errors import ConfigError, RunFailure, first_line
from experiments.names import (
    DIRECTION_TAG,
    LAUNCH_FILE,
    OBJECTIVE_TAG,
    OVERRIDES_FILE,
    SWEEP_TAG,
)
from experiments.record import uris
from experiments.record.client import RecorderGone
from experiments.record.recorder import MAX_TAG_LENGTH
from experiments.runner import (
    journal_header,
    live_settings,
    not_recorded_line,
    prepare,
    record_environment,
    reproduce_note,
    store_of,
)
from experiments.runner.identity import extra_tags
from experiments.sweeps import launching
from experiments.sweeps.outcomes import Outcome, counts_line, read_outcomes
from experiments.sweeps.parent import PARENT_FILE, SWEPT_FILE, sweep_name, swept_keys
from experiments.sweeps.search import note as search_note
from experiments.sweeps.stopping import LOST_JOB, close_abandoned, stop_jobs
from experiments.sweeps.summary import (
    BEST_RUN_TAG,
    best_metric,
    best_outcome,
    review_line,
    sweep_summary,
)

log = logging.getLogger(__name__)

REPORT_DIR = "report"  # the sweep's report: in the sweep directory and in the parent run


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
    recording: record.LiveRun  # the parent run
    store: Optional[record.Store]  # None when offline
    settings: record.Settings  # how its runs are recorded and waited for (tracking.*)
    directory: Path
    name: str
    task: Any = None  # the jobs' task (experiments.api.Task): its objective and direction
    pending: list[tuple[Outcome, Path, Any]] = field(default_factory=list)


_active: list[_Sweep] = []
_finished: list[Finished] = []


class SweepCallback(Callback):
    """Opens the sweep's parent run before any job starts and closes it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # A signal whose Interrupted Python dropped after the last job (signals.raise_swallowed)
        # is raised here, past Hydra (it passes KeyboardInterrupt on): the command then closes
        # the sweep KILLED, as for any other signal.
        signals.raise_swallowed()
        finish()


def launch_overrides(hydra_overrides: Any) -> list[str]:
    """The overrides that chose how a sweep ran its jobs: launcher and sweeper, not paths."""
    return [
        uris.scrub(str(item))
        for item in hydra_overrides
        if str(item).startswith(
            ("hydra/launcher=", "hydra/sweeper=", "hydra.launcher.", "hydra.sweeper.")
        )
    ]


def start(config: DictConfig) -> str | None:
    """Open the parent run of the sweep ``config`` describes and export its id to jobs.

    The parent is recorded like any run: a journal in the sweep directory, uploaded while
    the sweep goes on, with its own heartbeat, and where it was launched
    (``environment.json``, as a job records where it ran).

    Returns:
        The parent run's id (None when the sweep is kept offline).
    """
    tracking = config.tracking
    hydra_cfg = config.hydra  # HydraConfig is not set yet when a multirun starts
    overrides = [uris.scrub(item) for item in hydra_cfg.overrides.task]  # no password
    name = sweep_name(hydra_cfg.runtime.choices.get("experiment"), overrides)
    task = _task_of(config)
    experiment = tracking.experiment or config.task.name
    directory = Path(hydra_cfg.sweep.dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # the launcher fails on it next, and the command says so in one line
    header = journal_header(tracking, experiment, name, directory)
    header.note = reproduce_note(header.tracking_uri)
    tags = {
        SWEEP_TAG: "true",
        "sweep.dir": str(hydra_cfg.sweep.dir),
        "overrides": " ".join(overrides),
        **extra_tags(tracking),
    }
    store = store_of(tracking)
    settings = live_settings(tracking)
    if task is not None:  # what the jobs' objective is, as their runs say it
        tags.update({OBJECTIVE_TAG: task.objective_key, DIRECTION_TAG: task.direction})
    # Active from its journal's first line: a signal from here on (while it opens, raised
    # just below) ends the parent KILLED (finish), never lost.
    with signals.deferred():
        recording = record.open_run(directory, header, tags, store, settings)
        _active.append(_Sweep(recording, store, settings, directory, name, task))
    try:
        signals.raise_deferred()
        # What a rerun of the sweep starts from (python -m experiments.rerun PARENT).
        recording.recorder.log_text(OmegaConf.to_yaml(overrides), OVERRIDES_FILE)
        how = launch_overrides(hydra_cfg.overrides.hydra)
        if how:
            recording.recorder.log_text(OmegaConf.to_yaml(how), LAUNCH_FILE)
        # The jobs' start-up, while the store opens, where they run in this process.
        prepare(task if launching.runs_jobs_here(hydra_cfg.launcher) else None)
        # Where the sweep was launched, as each job records where it ran: the parent uses
        # no device (its jobs name theirs); git's answers were found just above.
        record_environment(recording.recorder, None)
        recording.started()  # a store that cannot take the parent stops the sweep here
    except BaseException:
        if recording.discarded:  # no parent run exists: nothing to close
            _active.pop()
        raise
    launching.share_cores(hydra_cfg.launcher)
    launching.warn_sqlite_on_a_cluster(hydra_cfg.launcher, header.tracking_uri, tracking.offline)
    swept = swept_keys(overrides, hydra_cfg.sweeper.get("params"))
    Path(directory, SWEPT_FILE).write_text(json.dumps(swept), encoding="utf-8")
    if recording.run_id is not None:
        Path(directory, PARENT_FILE).write_text(recording.run_id, encoding="utf-8")
    return recording.run_id


def _task_of(config: DictConfig) -> Any:
    """The task the sweep's config selects, or None where it cannot be had (each job then
    says why, in one line, as its own error)."""
    try:
        return tasks.load(task_name_of(config))
    except ConfigError as error:
        log.debug("the sweep's task: %s", error)
        return None


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
    process.restore_env()
    _settle(sweep)
    _close_jobs(sweep, interrupted, error)
    outcomes = read_outcomes(sweep.directory)
    searched = search_note.read(sweep.directory)
    task = sweep.task
    objective = task.objective_key if task is not None else None
    best = best_outcome(outcomes, task.direction) if task is not None else None
    searched_line = search_note.line(searched) if searched is not None else None
    summary = sweep_summary(sweep.name, objective, outcomes, best, searched_line)
    if any(outcome.run_id is not None for outcome in outcomes) and not interrupted:
        _report(sweep)  # (no job recorded a run: nothing to compare)
    if outcomes or searched:
        print(f"\n{summary}", flush=True)
        store_uri = sweep.store.uri if sweep.store is not None else None
        where = review_line(store_uri, sweep.recording.run_id, sweep.recording.experiment_id)
        if where:
            print(where, flush=True)
    _record_summary(sweep, outcomes, best, summary, searched)
    reason = _reason(outcomes, error, search_note.complete(searched))
    status = "KILLED" if interrupted else "FAILED" if reason else "FINISHED"
    delivery = sweep.recording.close(
        status, reason[:MAX_TAG_LENGTH] if reason else None, hurry=interrupted
    )
    if not delivery.recorded and not delivery.offline:
        log.warning("the sweep's parent run: %s", not_recorded_line(delivery))
    _finished.append(Finished(sweep.directory, outcomes, delivery.recorded or delivery.offline))
    return outcomes


def _close_jobs(sweep: _Sweep, interrupted: bool, error: str | None) -> None:
    """After a signal, stop this host's running jobs; otherwise close the runs of the dead."""
    parent_journal = sweep.recording.journal
    if interrupted:
        reason = error or "the sweep was interrupted"
        stop_jobs(sweep.directory, parent_journal, sweep.store, sweep.settings, reason)
    else:
        close_abandoned(
            sweep.directory, parent_journal, sweep.store, sweep.settings, "FAILED", LOST_JOB
        )


def _reason(outcomes: list[Outcome], error: str | None, nothing_to_run: bool) -> str | None:
    """Why the parent run did not finish (None: it did, also where a search's study held
    every trial already)."""
    failed = [outcome for outcome in outcomes if outcome.status == "FAILED"]
    if failed:
        return f"{len(failed)} of {len(outcomes)} jobs failed: {failed[0].reason}"
    return error or (None if outcomes or nothing_to_run else "no job ran")


def _record_summary(
    sweep: _Sweep,
    outcomes: list[Outcome],
    best: Optional[Outcome],
    summary: str,
    searched: Optional[dict[str, Any]] = None,
) -> None:
    """Into the parent run: the summary, the counts, the runs reused, the best objective,
    and a search's study."""
    recorder = sweep.recording.recorder
    tags = {"jobs": counts_line(outcomes)}
    if searched is not None:
        tags.update(search_note.tags(searched))
        for figure in searched.get("figures", []):  # Optuna's own, beside the report's
            recorder.log_artifact(sweep.directory / figure, REPORT_DIR)
    reused = [o.run_id for o in outcomes if o.status == "SKIPPED" and o.run_id is not None]
    if reused:
        tags["sweep.reused_runs"] = ",".join(reused)[:MAX_TAG_LENGTH]
    if best is not None and sweep.task is not None:
        tags[BEST_RUN_TAG] = str(best.run_id)
        recorder.log_metrics({best_metric(sweep.task.objective_key): best.objective})
    recorder.log_text(summary + "\n", "summary.txt")
    recorder.set_tags(tags)


def _report(sweep: _Sweep) -> None:
    """The sweep's comparison report, in ``<sweep dir>/report`` and the parent's ``report/``."""
    run_id = sweep.recording.run_id
    if sweep.store is None or run_id is None:
        return  # kept offline: python -m experiments.report --parent makes it after sync
    try:
        reply = record.call(
            sweep.store,
            "experiments.sweeps.report.assemble:publish",
            sweep.settings,
            parent=run_id,
            out=str((sweep.directory / REPORT_DIR).resolve()),
            # The jobs' task's own figures, by name: the report's process imports no task.
            reports={sweep.task.name: sweep.task.report}
            if sweep.task is not None and sweep.task.report
            else {},
        )
    except (RecorderGone, RunFailure, ConfigError) as failure:
        log.warning(
            "the sweep's report was not made: %s; make it with: python -m experiments.report "
            "--parent %s",
            first_line(failure),
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


def pending(outcome: Outcome, output_dir: str | Path, delivery: Any) -> None:
    """A job of this process whose last records are still on their way to the store."""
    if _active:
        _active[-1].pending.append((outcome, Path(output_dir), delivery))


def _settle(sweep: _Sweep) -> None:
    """Wait for the deliveries of the jobs that did not wait; mark those that failed."""
    for outcome, directory, delivery in sweep.pending:
        done = delivery.wait()
        if not done.recorded:
            outcome.status, outcome.reason = "UNSYNCED", not_recorded_line(done)
            outcome.write(directory)
            log.warning("job %s: %s", outcome.job, outcome.reason)
    sweep.pending.clear()
