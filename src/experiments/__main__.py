"""The command line: ``python -m experiments task=minimize optim.lr=0.1`` (or ``experiments``)."""

from __future__ import annotations

import logging
import os
import sys

from experiments import startup
from experiments.recorder import client as recorder

if recorder.is_command(__name__):
    # First thing: the recording process imports MLflow and opens the store while this
    # one imports torch and composes the config; no collector passes until the run starts.
    recorder.start_early()
    startup.begin()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments import cli, config, runner, signals, sweep, uris  # noqa: E402
from experiments.errors import ConfigError, NotRecorded, RunFailure  # noqa: E402
from experiments.tasks import schemas  # noqa: E402

log = logging.getLogger("experiments")

config.register(schemas())
uris.scrub_logs()  # a password in a tracking URI never reaches a log line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one job of a run or a sweep; return its objective for sweepers."""
    # From the job's first moment: a worker process (submitit's ignores SIGTERM) must end
    # its run KILLED when the launcher passes a signal on.
    with signals.handling():
        return _job(cfg)


def _job(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    # What the command line said, a password in a URI removed: it names runs and rows.
    overrides = [uris.scrub(item) for item in hydra_cfg.overrides.task]
    output_dir = hydra_cfg.runtime.output_dir
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    job = hydra_cfg.job.num if in_sweep else 0  # Hydra numbers jobs only in a multirun
    if in_sweep:
        outcome = sweep.started(job, overrides, output_dir)
    else:
        outcome = sweep.Outcome(job=job, overrides=overrides, status="FAILED")
    try:
        parent = sweep.parent_of(hydra_cfg.sweep.dir) if in_sweep else sweep.Parent()
        result = runner.execute(
            cfg,
            overrides,
            output_dir,
            parent_run_id=parent.run_id,
            parent_journal=parent.journal_id,
            run_name=parent.child_name(overrides),
            # In the launching process, the next job runs while this one's last records
            # are sent; the sweep collects how they fared before its summary.
            defer_delivery=in_sweep and sweep.active(),
        )
    except BaseException as error:
        expected = isinstance(error, (ConfigError, RunFailure))
        if not in_sweep:
            if not expected:
                raise
            cli.JobErrors.errors.append(error)  # reported by cli.invoke, as one line
            return None
        # A signal ends the job KILLED, also where a handler it reached raised an error of
        # its own (submitit's, on SIGUSR2 near the time limit), as the run itself does.
        stopped = signals.stop_reason(error)
        outcome.status = "KILLED" if stopped is not None else "FAILED"
        outcome.reason = stopped or cli.one_line(error)
        outcome.write(output_dir)
        if stopped is None:
            # Hydra re-raises only the sweep's first error: name every failed job here.
            log.error("job %s failed: %s", job, outcome.reason)
        raise
    delivery = result.delivery
    if delivery is not None and delivery.offline:
        log.info(
            "recorded offline in %s; upload with: python -m experiments.sync %s",
            delivery.journal.parent,
            delivery.journal.parent,
        )
    elif delivery is not None and not delivery.recorded:
        if not in_sweep:
            cli.JobErrors.errors.append(NotRecorded(runner.not_recorded_line(delivery)))
            return result.objective
        outcome.reason = runner.not_recorded_line(delivery)
        log.warning("job %s: %s", job, outcome.reason)
    if in_sweep:
        outcome.status = sweep.status_of(result)
        outcome.run_id, outcome.objective = result.run_id, result.objective
        outcome.write(output_dir)
        if result.pending is not None:
            sweep.pending(outcome, output_dir, result.pending)
    return result.objective


def main() -> None:
    """Console entry point."""
    status = cli.invoke(hydra_main)
    recorder.shutdown()  # every run already waited for its uploads: this is quick
    if "joblib" in sys.modules:
        # The joblib launcher's worker pool outlives the sweep; only a normal exit stops it.
        sys.exit(status)
    # Every run is closed and its records are in the store (or kept in its journal, and
    # the user was told) by now. Tearing down torch's and MLflow's module graphs would add over a
    # second to each command for nothing, so leave without it once output is flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
