"""One run, end to end: validate the config, open the MLflow run, execute the task.

:func:`run` works on a composed config and needs no Hydra, so tests can call it
directly; ``experiments.__main__`` is the thin Hydra entry point around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

import experiments
from experiments import config, devices, optimizers
from experiments.context import TaskContext
from experiments.tasks import TASKS
from experiments.tracking import Tracker, resolve_uri

log = logging.getLogger(__name__)

_trackers: dict[tuple[str | None, float], Tracker] = {}

CONFIG_HASH_TAG = "config.hash"
IDENTITY_EXCLUDED = ("tracking", "skip_existing")


@dataclass
class Result:
    """What one run produced.

    Attributes:
        objective: the task's objective (e.g. the final loss), for sweepers.
        run_id: the MLflow run that recorded it.
        skipped: True when ``skip_existing`` found this config already FINISHED, in the run
            ``run_id``, and nothing was run again.
    """

    objective: float | None
    run_id: str
    skipped: bool = False


def run(
    cfg: DictConfig, overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> float | None:
    """Execute the task that ``cfg`` names as one MLflow run; return its objective.

    See :func:`execute`, which this calls.
    """
    return execute(cfg, overrides, output_dir).objective


def execute(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    parent_run_id: str | None = None,
) -> Result:
    """Execute the task that ``cfg`` names and record it as one MLflow run.

    Args:
        cfg: a composed config (the root of ``conf/config.yaml``), without the hydra node.
        overrides: the command-line overrides that produced it; they name the run.
        output_dir: the run's local directory (Hydra's output directory); ``outputs/adhoc``
            when None.
        parent_run_id: the sweep's parent run, when this run is a job of a sweep.

    Returns:
        The objective and the run that recorded it.

    Raises:
        ConfigError: a bad setting; raised before any run is started when the config itself
            is bad, inside the run (which ends FAILED) when this machine cannot honour it.
        RunFailure: the task could not finish (divergence, out of memory); the run is FAILED.
    """
    started = time.perf_counter()
    settings = config.validate(cfg)
    optimizers.build(cfg.optim)  # a bad optimizer setting is refused before any run starts
    task_name = settings.task.name
    task = TASKS[task_name]
    tracker = tracker_for(settings.tracking.uri, settings.tracking.timeout_s)
    experiment_id = tracker.experiment_id(settings.tracking.experiment or task_name)
    identity = config_hash(cfg)
    if settings.skip_existing:
        done = finished_run(tracker, experiment_id, identity, getattr(task, "OBJECTIVE", None))
        if done is not None:
            log.info("skipped: this config already FINISHED as run %s", done.run_id)
            return done
    run_name = settings.tracking.run_name or run_name_for(task_name, overrides)
    out = Path(output_dir) if output_dir is not None else Path("outputs") / "adhoc"
    out.mkdir(parents=True, exist_ok=True)
    tags = {**base_tags(task_name, overrides), CONFIG_HASH_TAG: identity}
    if parent_run_id is not None:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id

    with tracker.start_run(experiment_id, run_name, tags) as rec:
        rec.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        rec.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        rec.log_text(OmegaConf.to_yaml(list(overrides)), "overrides.yaml")
        device = devices.resolve(settings.device)
        rec.set_tags({"device": str(device), "device.name": devices.describe(device)})
        torch.manual_seed(settings.seed)
        ctx = TaskContext(
            device=device,
            recorder=rec,
            optim=cfg.optim,
            seed=settings.seed,
            output_dir=out,
            log_every=settings.tracking.log_every,
        )
        setup_s = time.perf_counter() - started
        objective = task.run(settings.task, ctx)
        task_s = time.perf_counter() - started - setup_s
        # total: until the results are handed over; the run's end sends them in one call
        total_s = time.perf_counter() - started
        rec.log_metrics({"time/setup_s": setup_s, "time/task_s": task_s, "time/total_s": total_s})
    log.info("run %r FINISHED in experiment %s (%s)", run_name, experiment_id, tracker.uri)
    return Result(objective, rec.run_id)


def config_hash(cfg: DictConfig) -> str:
    """A run's identity for ``skip_existing``: a hash of its resolved config.

    Where results are recorded (``tracking``) and ``skip_existing`` itself are not part of
    what was computed, so they are left out.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in IDENTITY_EXCLUDED:
        tree.pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_run(
    tracker: Tracker, experiment_id: str, identity: str, objective_key: str | None
) -> Result | None:
    """The newest FINISHED run of this config in the experiment, if there is one."""
    found = tracker.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{identity}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    metrics = found[0].data.metrics
    objective = metrics.get(objective_key) if objective_key is not None else None
    return Result(objective, found[0].info.run_id, skipped=True)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``.

    Lists are kept whole as values (``optim.betas: [0.9, 0.999]``).
    """
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def run_name_for(task_name: str, overrides: Sequence[str]) -> str:
    """A readable run name: the task, then the overrides that differ from the defaults."""
    shown = [item for item in overrides if not item.startswith(("task=", "hydra."))]
    return " ".join([task_name, *shown])[:250]


def base_tags(task_name: str, overrides: Sequence[str]) -> dict[str, str]:
    """Tags every run carries, known before the task starts."""
    tags = {
        "task": task_name,
        "torch.version": torch.__version__,
        "experiments.version": experiments.__version__,
        "overrides": " ".join(overrides) or "(none)",
        "mlflow.source.name": "experiments",
    }
    commit = git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
    return tags


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None when installed elsewhere."""
    root = Path(experiments.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def tracker_for(uri: str | None, timeout_s: float) -> Tracker:
    """The process's tracker for a store: one client per store, shared by a sweep's jobs."""
    key = (resolve_uri(uri)[0], timeout_s)
    if key not in _trackers:
        _trackers[key] = Tracker(key[0], timeout_s)
    return _trackers[key]
