"""What a sweep's launcher decides for its jobs before they start.

- :func:`share_cores`: each parallel worker's share of the cores (``OMP_NUM_THREADS``), set
  in the launching process for the workers to inherit, undone when the sweep ends.
- :func:`runs_jobs_here`: whether the jobs run in the launching process (Hydra's basic
  launcher): only there is their start-up prepared, and a search's study in memory reachable.
- :func:`warn_sqlite_on_a_cluster`: said once where the jobs of a Slurm launcher would reach
  a SQLite store over a shared filesystem.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from experiments import process
from experiments.record import uris

log = logging.getLogger(__name__)


def runs_jobs_here(launcher: DictConfig) -> bool:
    """Whether the launcher runs the jobs in this process, one after another (Hydra's basic
    launcher); joblib's workers, submitit's and Slurm's jobs are processes of their own."""
    return str(launcher.get("_target_", "")).endswith(".BasicLauncher")


def warn_sqlite_on_a_cluster(launcher: DictConfig, tracking_uri: str, offline: bool) -> None:
    """Say once that a SQLite store is no place for jobs on several nodes.

    SQLite's own documentation: its locking is unreliable on a network filesystem, which is
    where a Slurm sweep's jobs on several nodes would reach the file.
    """
    target = str(launcher.get("_target_", ""))
    if offline or not target.endswith("SlurmLauncher"):
        return
    path = uris.sqlite_path(tracking_uri)
    if path is None:
        return
    log.warning(
        "the tracking store %s is a SQLite file, which jobs on several nodes reach over a "
        "shared filesystem, where SQLite's locking is not reliable: use a tracking server "
        "(docs/team.md), or tracking.offline=true and python -m experiments.sync afterwards",
        tracking_uri,
    )


def share_cores(launcher: DictConfig) -> None:
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
    process.set_env("OMP_NUM_THREADS", str(max(1, cores // workers)))  # until the sweep ends
