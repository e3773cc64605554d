"""The one exception type the command line reports as a single line, without a traceback."""


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
