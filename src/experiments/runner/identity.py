"""What a run says about itself: its params, its first tags, its name and its config's hash.

These are decided before the task starts (the params once the device is resolved), from the
composed config and the overrides that produced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

import experiments
from experiments import config
from experiments.config import IDENTITY_EXCLUDED
from experiments.names import DIRECTION_TAG, OBJECTIVE_TAG, VERDICT_TAG, without_tags
from experiments.record import uris

if TYPE_CHECKING:
    from experiments.api import Task

HOW = tuple(f"{key}." for key in IDENTITY_EXCLUDED) + ("skip_existing",)


def task_params(
    task: Task, settings: config.Config, cfg: DictConfig, device: torch.device | str
) -> dict[str, Any]:
    """The params of a run: the settings that affect its task, with the values it used.

    The optimizer's settings only where the task uses an optimizer, no tracking settings
    (the run's ``config.yaml`` artifact keeps the whole resolved config), the device that
    ``auto`` resolved to, and what the task resolves itself (its ``resolved_params``: a
    matmul's shape and thread count).
    """
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    uses_optimizer = task.uses_optimizer
    kept = {
        key: uris.scrub(value) if isinstance(value, str) else value
        for key, value in params.items()
        if not key.startswith(HOW) and (uses_optimizer or not key.startswith("optim."))
    }
    kept["device"] = str(device)
    resolved = task.function("resolved_params")
    if resolved is not None:
        kept.update({f"task.{key}": value for key, value in resolved(settings.task).items()})
    return kept


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
    shown = [
        item
        for item in without_tags(overrides)
        if not item.lstrip("+~").startswith(("task=", "hydra.", "resume."))
    ]
    return " ".join([task_name, *shown])[:250]


def base_tags(task: Task, overrides: Sequence[str]) -> dict[str, str]:
    """Tags every run carries, known before the task starts (where it runs, its code
    included, is recorded once the device is resolved: ``runner.environment``).

    What the task says of its results goes with them, so that a summary, a report or a
    verdict on the run needs neither the task nor its package: the objective's metric
    (``objective``), which way is better (``direction``), how a rerun is judged
    (``verdict``).
    """
    tags = {
        "task": task.name,
        OBJECTIVE_TAG: task.objective_key,
        DIRECTION_TAG: task.direction,
        VERDICT_TAG: task.verdict.describe(),
        "torch.version": torch.__version__,
        "experiments.version": experiments.__version__,
        "overrides": " ".join(overrides) or "(none)",
        "mlflow.source.name": "experiments",
    }
    return tags


def extra_tags(tracking: config.TrackingConfig) -> dict[str, str]:
    """The tags ``tracking.tags`` adds to every run and to a sweep's parent."""
    return {str(key): str(value) for key, value in tracking.tags.items()}
