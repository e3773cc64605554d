"""``python -m experiments.record.service [PID]``: the recording process (started by ``client``).

Its process-wide set-up is made here, first thing: the signals meant for the run's process
are ignored (blocked from its first instant: see ``record.client``), the collector is paused
while MLflow loads, standard output becomes the reply channel alone (anything else that
would print there, MLflow's own messages, goes to standard error, passwords scrubbed), and
its warnings go to the process it serves, PID (its parent).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from experiments import process
from experiments.record import uris
from experiments.record.client import service_signals
from experiments.record.service import figures
from experiments.record.service.loop import Service

# Signals meant for the run's process (see experiments.record.service).
IGNORED = tuple(sorted(service_signals()))


class _Events(logging.Handler):
    """Sends this process's warnings to the process it serves, which logs them."""

    def __init__(self, service: Service) -> None:
        super().__init__(logging.WARNING)
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        self.service.send(
            {"event": "log", "level": record.levelname, "message": record.getMessage()}
        )


def main() -> None:
    """Serve the process that started this one, on this process's stdin and stdout."""
    for signum in IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    # Started with them blocked (see record.client): any sent meanwhile is dropped now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, IGNORED)
    process.pause_collector()
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to standard error, not into the replies
    sys.stdout = sys.stderr = uris.ScrubbedStream(sys.stderr)  # MLflow prints URLs
    process.scrub_log_records()
    served = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    service = Service(channel, served)
    logger = logging.getLogger("experiments")
    logger.addHandler(_Events(service))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    import mlflow  # noqa: F401  (the point of this process: imported while the run starts)

    service.send({"event": "ready"})
    figures.warm_up()
    # What is loaded by now lives as long as the process: out of the collector's sight,
    # it is not walked again and again by its full passes (0.2 s of a run's close).
    process.settle()
    service.serve(sys.stdin.buffer)
    channel.close()
    os._exit(0)


if __name__ == "__main__":
    main()
