"""The errors every part raises, and how an error reads in one line.

The command line reports :class:`ConfigError` and :class:`RunFailure` (and their kinds) as a
single ``error: ...`` line, without a traceback; anything else is a bug and keeps its
traceback. This module imports nothing of the project: every part may use it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad value in the user's configuration or input.

    The message names the offending key and quotes the bad value, e.g.
    ``task.steps must be a positive integer, got 0``. The command line prints it as one
    line and exits non-zero; the run, if one was started, ends FAILED with it as a tag.
    """


class RunFailure(RuntimeError):
    """A run that started correctly but could not finish (divergence, out of memory, ...).

    Reported like :class:`ConfigError`: one line, non-zero exit, run FAILED.
    """


class NotRecorded(RunFailure):
    """The task finished, but its records did not all reach the tracking store.

    They are kept in the run's journal; the message says where, and how to upload them
    (``python -m experiments.sync DIR``). The command exits with status 75.
    """


class TrackingError(RunFailure):
    """The tracking store refused to start a run (reported as one line, exit status 1)."""


class StoreUnreachable(ConfigError):
    """The tracking store did not answer: a server down, a network blip, a busy database.

    A run refuses to start on it (one line); a job of a sweep runs offline instead.
    """


class Pruned(Exception):
    """A search stopped this trial early: its intermediate objective was not promising.

    Not a failure: the run ends KILLED with the reason (``pruned at step 40: ...``) and a
    ``pruned`` tag, the sweep's summary lists the job PRUNED, and the search tells its study
    the trial was pruned. Raised by a recorder's ``report`` (see ``tasks.context``).
    """


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message, or its type's name.

    MLflow's messages run over many lines (a response body, a traceback from the server);
    a run's ``error`` tag and a warning keep the first. An ``MlflowException`` keeps its
    text in ``message``.
    """
    text = error if isinstance(error, str) else getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if lines:
        return lines[0]
    return "" if isinstance(error, str) else type(error).__name__
