"""Closing what a sweep's jobs left open: after a signal, and when a job's process died.

After a signal, the running jobs of this host (joblib workers, submitit_local jobs) get
SIGTERM and end their runs KILLED themselves; jobs not started yet see the ``stopped`` file
and do not start. A job whose process is gone without closing its run (killed, out of
memory) has its journal uploaded and its run closed, with the reason, by the recording
process (``record.adopt``).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from experiments import record
from experiments.errors import ConfigError, RunFailure
from experiments.record import journal, liveness
from experiments.record.client import RecorderGone
from experiments.sweeps.outcomes import OUTCOME_FILE, Outcome, read_outcomes
from experiments.sweeps.parent import STOPPED_FILE

log = logging.getLogger(__name__)

LOST_JOB = "lost: the job's process ended without reporting (killed, or out of memory?)"
# Beyond the jobs' own wait for their last records (tracking.stop_wait_s), the time an
# interrupted sweep gives them to exit.
EXIT_SLACK_S = 2.0


def stop_wait(settings: record.Settings) -> float:
    """How long an interrupted sweep waits for its running jobs to close their runs: as long
    as each waits for its last records (``tracking.stop_wait_s``), and a moment to exit."""
    return settings.stop_wait_s + EXIT_SLACK_S


def stop_jobs(
    directory: Path,
    parent_journal: Path,
    store: record.Store | None,
    settings: record.Settings,
    reason: str,
) -> None:
    """Stop the running jobs of an interrupted sweep that run on this host; close the rest.

    Jobs still starting see the ``stopped`` file and do not start. Running jobs in other
    processes of this host (joblib workers, submitit_local jobs) get SIGTERM and end their
    runs KILLED themselves; the runs of jobs whose process is gone are closed here.

    Args:
        directory: the sweep's directory.
        parent_journal: the parent run's journal (left alone).
        store: where the runs go (None: kept offline, ``sync`` closes them later).
        settings: the sweep's ``tracking.*``: how long the jobs are waited for, and the
            recording process when it closes a run.
        reason: why the sweep stopped, the runs' ``error``.
    """
    Path(directory, STOPPED_FILE).write_text(reason, encoding="utf-8")
    for outcome in read_outcomes(directory):
        if outcome.status == "RUNNING":
            outcome.signal(signal.SIGTERM)  # only the job's own process, never a reused pid
    waited = stop_wait(settings)
    deadline = time.monotonic() + waited
    while time.monotonic() < deadline and _still_running(directory):
        time.sleep(0.1)
    running = _still_running(directory)
    if running:
        log.warning(
            "job %s still closing after %.0f s (tracking.stop_wait_s + %.0f s): left to end alone",
            ", ".join(str(outcome.job) for outcome in running),
            waited,
            EXIT_SLACK_S,
        )
    close_abandoned(
        directory, parent_journal, store, settings, "KILLED", reason, this_host_only=True
    )


def _still_running(directory: Path) -> list[Outcome]:
    """The jobs of this host that are running still."""
    return [
        o
        for o in read_outcomes(directory)
        if o.status == "RUNNING" and liveness.same_place(o.host, o.place) and not o.gone()
    ]


def close_abandoned(
    directory: Path,
    parent_journal: Path,
    store: record.Store | None,
    settings: record.Settings,
    status: str,
    reason: str,
    this_host_only: bool = False,
) -> None:
    """Close what jobs whose process is gone left open: their runs and their outcomes.

    Args:
        directory, parent_journal, store, settings: see :func:`stop_jobs`.
        status, reason: how the runs end.
        this_host_only: leave the journals of other hosts alone (after an interruption,
            jobs on a cluster go on without the launching process).
    """
    for path in journal.find([directory]):
        if path == parent_journal or journal.ended(path) or journal.held(path) is not False:
            continue
        if this_host_only:
            header = journal.read_header(path)
            if not liveness.same_place(header.host, header.place):
                continue
        _close_run(path, store, settings, status, reason)
    for outcome in read_outcomes(directory):
        if outcome.status == "RUNNING" and outcome.gone():
            outcome.status, outcome.reason = status, reason
            assert outcome.directory is not None
            outcome.write(outcome.directory)


def _close_run(
    path: Path,
    store: record.Store | None,
    settings: record.Settings,
    status: str,
    reason: str,
) -> None:
    """A job's process is gone without closing its run: upload what it recorded, end it."""
    if store is None:
        return  # kept offline: sync closes it later
    try:
        run_id = record.adopt(path, store, status, reason, settings)
    except (RecorderGone, RunFailure, ConfigError) as failure:
        log.warning("could not close the run of %s: %s (sync will)", path, failure)
        return
    outcome_file = Path(path.parent, OUTCOME_FILE)
    if outcome_file.exists():
        outcome = Outcome.read(outcome_file)
        if outcome.status == "RUNNING":
            outcome.run_id = run_id
            outcome.write(path.parent)
