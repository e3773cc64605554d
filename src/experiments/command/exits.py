"""How the command ends: one error line, an exit status, no traceback.

Unless the user asked for ``HYDRA_FULL_ERROR=1``, :func:`invoke` has Hydra re-raise errors
instead of printing them, and reports the expected kinds of error as a single ``error: ...``
line (:mod:`.messages`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from experiments import process, runner, signals
from experiments.command.messages import one_line
from experiments.errors import ConfigError, NotRecorded, RunFailure
from experiments.record import uris
from experiments.sweeps import callback as sweeps

NOT_RECORDED_STATUS = 75  # sysexits' EX_TEMPFAIL: finished, not recorded; sync and retry


class SweepFailed(RunFailure):
    """Some jobs of a sweep failed; each was reported, and the summary names them."""


EXPECTED = (ConfigError, RunFailure, HydraException, OmegaConfBaseException)


class JobErrors:
    """Errors of single-run jobs, handed from the job to :func:`invoke`.

    In a single run, Hydra prints an extra line before re-raising a job's error; the job
    stores its expected error here and returns instead, and :func:`invoke` reports it.
    """

    errors: list[BaseException] = []


def invoke(hydra_main: Callable[[], object]) -> int:
    """Call a ``@hydra.main`` function and turn expected errors into one line.

    Returns:
        The process exit status: 0; 1 for an error; 75 when the task finished but its
        records did not all reach the store (they are kept in its journal); 128 + the
        signal's number when a signal stopped it (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
    """
    JobErrors.errors.clear()
    try:
        # What a run set for itself (torch's matmul precision and deterministic algorithms,
        # CUBLAS_WORKSPACE_CONFIG for deterministic=true) is undone, so a command called
        # in-process (tests, scripts) leaves nothing behind.
        with runner.torch_settings_kept():
            return _invoke(hydra_main)
    finally:
        process.restore_env()


def _invoke(hydra_main: Callable[[], object]) -> int:
    try:
        with signals.handling():
            return _handled(hydra_main)
    except signals.Interrupted as error:  # came while the end was closed: raised as it ends
        _report(error.reason)
        return error.exit_status


def _handled(hydra_main: Callable[[], object]) -> int:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        _call(hydra_main)
        return 0
    try:
        with process.hydra_reraises():
            _call(hydra_main)
    except NotRecorded as error:
        _report(str(error))
        return NOT_RECORDED_STATUS
    except EXPECTED as error:
        _report(one_line(error))
        return 1
    except KeyboardInterrupt as error:
        _report(signals.stop_reason(error) or "interrupted")
        return getattr(error, "exit_status", 130)
    except OSError as error:
        if error.filename is None:
            raise
        _report(file_error(error, sys.argv[1:]))
        return 1
    return 0


def _report(line: str) -> None:
    """The command's one error line (a password in a URI it quotes removed)."""
    print(f"error: {uris.scrub(line)}", file=sys.stderr)


OUTPUT_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


def file_error(error: OSError, argv: list[str]) -> str:
    """A file or directory the command could not create or write, as one line.

    Names the setting that chose it when the command line set one (the output
    directory Hydra creates before the job starts, e.g. ``hydra.run.dir=/proc/x``).
    """
    name = str(error.filename)
    reason = error.strerror or type(error).__name__
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in OUTPUT_DIR_KEYS and value and (name.startswith(value) or value.startswith(name)):
            return f"{key}={value}: cannot create the output directory {name}: {reason}"
    return f"cannot create or write {name}: {reason}"


def _call(hydra_main: Callable[[], object]) -> None:
    interrupted, stopped = False, None
    before = len(sweeps.finished())
    try:
        hydra_main()
        # A signal deferred while the last run closed, or whose Interrupted Python dropped
        # after it had ended (see signals.raise_swallowed; a sweep's callback looks before it
        # closes the parent): the command exits as the signal asked.
        signals.raise_deferred()
        signals.raise_swallowed()
    except KeyboardInterrupt as error:
        interrupted, stopped = True, signals.stop_reason(error)
        raise
    except EXPECTED as error:
        stopped = one_line(error)
        raise
    except Exception as error:
        if not sweeps.active():
            raise  # a bug: keep its traceback
        # A sweeper or launcher gave up (e.g. Optuna with no completed trial): the jobs
        # reported their own errors, and the summary below says what ran.
        stopped = f"sweep stopped: {one_line(error)}"
        raise SweepFailed(stopped) from error
    finally:
        # Hydra skips on_multirun_end when a job failed: close the sweep here too.
        with signals.deferred():
            sweeps.finish(interrupted=interrupted, error=stopped)
    # The sweep was closed here, or by Hydra's callback when every job returned.
    for closed in sweeps.finished()[before:]:
        _check_outcomes(closed)
    if JobErrors.errors:
        raise JobErrors.errors[0]


def _check_outcomes(closed: sweeps.Finished) -> None:
    """Raise the error that sums up a finished sweep's failed or unrecorded jobs."""
    outcomes, directory = closed.outcomes, closed.directory
    failed = [outcome for outcome in outcomes if outcome.status == "FAILED"]
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(outcomes)} jobs failed: {failed[0].reason}")
    unsynced = [outcome for outcome in outcomes if outcome.status == "UNSYNCED"]
    if unsynced or not closed.parent_recorded:
        what = f"{len(unsynced)} of {len(outcomes)} jobs" if unsynced else "the sweep's parent"
        raise NotRecorded(
            f"{what} finished but not all in the tracking store; the records are kept in "
            f"{directory}; upload them with: python -m experiments.sync {directory}"
        )
