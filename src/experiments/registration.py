"""What Hydra composes against, registered once per process: the root, ``tracking`` and
``optim`` schemas in its ConfigStore, and the ``uid`` and ``gpus`` resolvers.

The tasks' schemas are not registered here: the task registry serves each one when Hydra
composes it (``hydra_plugins.experiments_tasks``), so that a command imports only the task
it selects. The schemas themselves live beside their values (``config``, ``optimizers``);
this module, which imports both, is what the entry points and the compose API call.
"""

from __future__ import annotations

import uuid
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments.config import Config
from experiments.optimizers import SCHEMAS as OPTIM_SCHEMAS


def register() -> None:
    """Register the root and optimizer schemas, and the ``uid`` and ``gpus`` resolvers."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, schema in OPTIM_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    # A token that keeps two runs or sweeps started in the same second apart. Cached, so
    # every job of one sweep (Hydra copies the resolver cache to each job) shares it.
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True)
    # The GPUs a job on a device asks a cluster for: ${gpus:${device}} in the Slurm preset.
    if not OmegaConf.has_resolver("gpus"):
        OmegaConf.register_new_resolver("gpus", _gpus_for)


def _gpus_for(spec: str) -> Optional[int]:
    """None for none: the job script then has no --gpus-per-node line at all."""
    from experiments.devices import gpus_for

    return gpus_for(spec) or None
