"""Building a ``torch.optim`` optimizer from the ``optim`` config group.

Every file in ``conf/optim`` names its class with ``_target_`` and ``_partial_: true``; the
task calls the resulting partial with its parameters. Any ``torch.optim`` class works,
including ones without a shipped YAML: their keyword arguments are checked against the
class's signature so a misspelt key is named rather than passed on.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Iterable

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def build(optim: DictConfig | dict[str, Any]) -> OptimizerFactory:
    """The optimizer factory an ``optim`` config describes.

    Args:
        optim: the composed ``optim`` node (``_target_``, ``lr`` and the class's options).

    Returns:
        A callable taking the parameters to optimise and returning the optimizer.

    Raises:
        ConfigError: the target is not a ``torch.optim.Optimizer`` class, or an option is
            not one of its arguments.
    """
    options = OmegaConf.to_container(optim) if isinstance(optim, DictConfig) else dict(optim)
    target = options.get("_target_")
    cls = _optimizer_class(target)
    accepted = inspect.signature(cls).parameters
    for key in options:
        if not key.startswith("_") and key not in accepted:
            allowed = ", ".join(name for name in accepted if name != "params")
            raise ConfigError(f"optim.{key} is not an argument of {target}; it takes: {allowed}")
    spec = {**options, "_partial_": True, "_convert_": "all"}
    try:
        factory = instantiate(spec)
    except InstantiationException as error:
        raise ConfigError(f"optim: cannot build {target}: {error}") from error
    return _checked(factory, target)


def warm_up() -> None:
    """Import what constructing any torch optimizer imports: ``torch._dynamo``.

    torch imports it on the first optimizer's ``add_param_group`` (most of a second). The
    runner calls this while the recording process opens the store, which takes that time
    off a run's critical path.
    """
    import torch._dynamo  # noqa: F401


def _optimizer_class(target: Any) -> type[torch.optim.Optimizer]:
    if not isinstance(target, str) or not target:
        raise ConfigError(f"optim._target_ must name a torch.optim class, got {target!r}")
    module_name, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"optim._target_={target} cannot be imported: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optim._target_={target} is not a torch.optim.Optimizer class")
    return cls


def _checked(factory: OptimizerFactory, target: str) -> OptimizerFactory:
    def make(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        try:
            return factory(params)
        except (ValueError, TypeError) as error:
            # torch validates ranges itself ("Invalid beta parameter ..."): name the group.
            raise ConfigError(f"optim ({target}): {error}") from None

    return make
