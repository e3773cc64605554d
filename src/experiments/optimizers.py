"""The ``optim`` config group: its schemas, and building a ``torch.optim`` optimizer from it.

Each shipped optimizer has a schema with torch's own argument names (registered as
``<name>_schema``; ``conf/optim/<name>.yaml`` extends it). Every file in ``conf/optim`` names
its class with ``_target_`` and ``_partial_: true``; the task calls the resulting partial
with its parameters. Any ``torch.optim`` class works,
including ones without a shipped YAML: their keyword arguments are checked against the
class's signature so a misspelt key is named rather than passed on.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.config import check_non_negative, check_positive, check_positive_int
from experiments.errors import ConfigError

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


@dataclass
class OptimConfig:
    """Fields every optimizer shares; ``_partial_`` lets the task pass the parameters later."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 0.001

    def __post_init__(self) -> None:
        check_positive("optim.lr", self.lr)
        if hasattr(self, "weight_decay"):
            check_non_negative("optim.weight_decay", self.weight_decay)


@dataclass
class SGDConfig(OptimConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("optim.momentum", self.momentum)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(
                "optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0, "
                f"got momentum={self.momentum}, dampening={self.dampening}"
            )


@dataclass
class AdamConfig(OptimConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers, got {self.betas!r}")
        for index, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"optim.betas[{index}] must be in [0, 1), got {beta!r}")
        check_positive("optim.eps", self.eps)


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class RMSpropConfig(OptimConfig):
    _target_: str = "torch.optim.RMSprop"
    lr: float = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("optim.alpha", self.alpha)
        check_positive("optim.eps", self.eps)
        check_non_negative("optim.momentum", self.momentum)


@dataclass
class AdagradConfig(OptimConfig):
    _target_: str = "torch.optim.Adagrad"
    lr: float = 0.01
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("optim.lr_decay", self.lr_decay)
        check_non_negative("optim.initial_accumulator_value", self.initial_accumulator_value)
        check_positive("optim.eps", self.eps)


@dataclass
class LBFGSConfig(OptimConfig):
    _target_: str = "torch.optim.LBFGS"
    lr: float = 1.0
    max_iter: int = 20
    max_eval: Optional[int] = None
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9
    history_size: int = 100
    line_search_fn: Optional[str] = "strong_wolfe"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("optim.max_iter", self.max_iter)
        if self.max_eval is not None:
            check_positive_int("optim.max_eval", self.max_eval)
        check_positive_int("optim.history_size", self.history_size)
        if self.line_search_fn not in (None, "strong_wolfe"):
            raise ConfigError(
                f"optim.line_search_fn must be null or 'strong_wolfe', got {self.line_search_fn!r}"
            )


SCHEMAS: dict[str, type[OptimConfig]] = {
    "sgd": SGDConfig,
    "adam": AdamConfig,
    "adamw": AdamWConfig,
    "rmsprop": RMSpropConfig,
    "adagrad": AdagradConfig,
    "lbfgs": LBFGSConfig,
}


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
