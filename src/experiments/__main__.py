"""The command line: ``python -m experiments task=minimize optim.lr=0.1`` (or ``experiments``)."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments import cli, config, runner
from experiments.errors import ConfigError, RunFailure
from experiments.tasks import schemas

log = logging.getLogger("experiments")

config.register(schemas())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one job of a run or a sweep; return its objective for sweepers."""
    hydra_cfg = HydraConfig.get()
    try:
        return runner.run(
            cfg,
            overrides=list(hydra_cfg.overrides.task),
            output_dir=hydra_cfg.runtime.output_dir,
        )
    except (ConfigError, RunFailure) as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            cli.JobErrors.errors.append(error)  # reported by cli.invoke, as one line
            return None
        # Hydra re-raises only the sweep's first error: name every failed job here.
        log.error("job %s failed: %s", hydra_cfg.job.num, cli.one_line(error))
        raise


def main() -> None:
    """Console entry point."""
    status = cli.invoke(hydra_main)
    # Every run is closed and every metric flushed by now (the recorder writes
    # synchronously). Tearing down torch's and MLflow's module graphs would add over a
    # second to each command for nothing, so leave without it once output is flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
