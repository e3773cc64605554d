"""The command line's Hydra application: ``python -m experiments [-m] [overrides ...]``.

:func:`hydra_main` is Hydra's entry (``@hydra.main``): each job it runs is handed to
:func:`.job.run_job` with signals handled from its first moment. :func:`main` is what the
command does around it: its process-wide settings, the one error line and exit status
(:mod:`.exits`), and a quick exit once every run is closed.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from experiments import process, registration, signals
from experiments.command.exits import invoke
from experiments.command.job import run_job
from experiments.record import client

# The schemas back every config group (as Hydra registers its own configs: on import), also
# in a launcher's worker, which imports this module to run hydra_main. A task's schema is
# served when Hydra composes it (hydra_plugins.experiments_tasks): only that task is imported.
registration.register()


@hydra.main(version_base="1.3", config_path="pkg://experiments.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one job of a run or a sweep; return its objective for sweepers."""
    process.scrub_log_records()  # also in a launcher's worker, which logs its overrides
    # From the job's first moment: a worker process (submitit's ignores SIGTERM) must end
    # its run KILLED when the launcher passes a signal on.
    with signals.handling():
        return run_job(cfg)


def main() -> None:
    """Run the command and exit with its status (see ``exits.invoke``)."""
    process.scrub_log_records()  # a password in a tracking URI never reaches a log line
    status = invoke(hydra_main)
    client.shutdown()  # every run already waited for its uploads: this is quick
    if "joblib" in sys.modules:
        # The joblib launcher's worker pool outlives the sweep; only a normal exit stops it.
        sys.exit(status)
    # Every run is closed and its records are in the store (or kept in its journal, and
    # the user was told) by now. Tearing down torch's and MLflow's module graphs would add
    # over a second to each command for nothing, so leave without it once output is flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
