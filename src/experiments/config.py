"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML file under ``conf/`` extends one of these schemas through its defaults list
(``- /minimize_schema@_here_``), so unknown keys and wrong types fail while Hydra composes
the config. Range checks live next to the values, in ``__post_init__``: they run when
:func:`validate` turns the composed config into these dataclasses, before any run starts.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.errors import ConfigError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def open_mapping(values: dict[str, Any]) -> DictConfig:
    """A mapping node that accepts new keys from the command line (``task.init={x: 1, y: 2}``).

    Hydra composes in struct mode, where a plain mapping refuses keys it does not already
    have; the variables of an expression are the user's choice, so these nodes stay open.
    """
    return DictConfig(values, flags={"struct": False})


def check_positive(key: str, value: float) -> None:
    """Raise unless ``value`` is a finite number greater than zero."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def check_non_negative(key: str, value: float) -> None:
    """Raise unless ``value`` is a finite number, zero or more."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key} must be a non-negative number, got {value!r}")


def check_positive_int(key: str, value: int) -> None:
    """Raise unless ``value`` is an integer of at least one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def check_number_mapping(key: str, values: dict[str, Any]) -> dict[str, float]:
    """Check a variable -> number mapping such as ``task.init``; return it with float values."""
    if not values:
        raise ConfigError(f"{key} must name at least one variable, got {{}}")
    checked = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}.{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}.{name} must be finite, got {value!r}")
        checked[str(name)] = float(value)
    return checked


def check_choice(key: str, value: str, choices: tuple[str, ...] | dict) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def check_expression(expr: str, values: dict[str, float], key: str) -> None:
    """Parse ``task.expr`` and check that the mapping ``key`` gives each variable a value.

    Args:
        expr: the expression's text.
        values: the variable -> number mapping (``task.init``, ``task.at``).
        key: that mapping's config key, for the message.
    """
    from experiments.expressions import parse  # imports torch: only tasks need it

    variables = parse(expr).variables
    missing = [name for name in variables if name not in values]
    if missing:
        example = ", ".join(f"{name}: {values.get(name, 0.0)}" for name in variables)
        raise ConfigError(
            f"{key} has no value for {', '.join(missing)} used in task.expr {expr!r}; "
            f"e.g. '{key}={{{example}}}'"
        )


# --- optimizers: one schema per shipped optimizer, with torch's own argument names ---


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


OPTIM_SCHEMAS: dict[str, type[OptimConfig]] = {
    "sgd": SGDConfig,
    "adam": AdamConfig,
    "adamw": AdamWConfig,
    "rmsprop": RMSpropConfig,
    "adagrad": AdagradConfig,
    "lbfgs": LBFGSConfig,
}


# --- tracking and the root config ---


@dataclass
class TrackingConfig:
    """Where and how runs are recorded."""

    uri: Optional[str] = None  # None: MLFLOW_TRACKING_URI, else MLflow's default store
    experiment: Optional[str] = None  # None: the task's name
    run_name: Optional[str] = None  # None: built from the task and the overrides
    log_every: int = 1
    timeout_s: float = 10.0  # bounded wait for a remote tracking server
    offline: bool = False  # record into the run's journal only; upload later with sync
    retry_s: float = 60.0  # how long a failing store is retried mid-run
    heartbeat_s: float = 30.0  # how often a running run says it is alive
    lost_after_s: float = 300.0  # a run silent this long (seen from another host) is lost

    def __post_init__(self) -> None:
        check_positive_int("tracking.log_every", self.log_every)
        check_positive("tracking.timeout_s", self.timeout_s)
        check_non_negative("tracking.retry_s", self.retry_s)
        check_positive("tracking.heartbeat_s", self.heartbeat_s)
        check_positive("tracking.lost_after_s", self.lost_after_s)
        if self.lost_after_s < 2 * self.heartbeat_s:
            raise ConfigError(
                "tracking.lost_after_s must be at least twice tracking.heartbeat_s "
                f"({2 * self.heartbeat_s:g}), got {self.lost_after_s:g}"
            )
        if self.experiment is not None and not self.experiment.strip():
            raise ConfigError("tracking.experiment must not be empty, got ''")


@dataclass
class Config:
    """The root of every composed config."""

    task: Any = MISSING
    optim: Any = MISSING
    device: str = "auto"
    seed: int = 0
    skip_existing: bool = False
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        from experiments.devices import check_spec

        check_spec(self.device)
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if self.skip_existing and self.tracking.offline:
            raise ConfigError(
                "skip_existing=true looks up finished runs in the tracking store, which "
                "tracking.offline=true does not reach; use one or the other"
            )


def register(task_schemas: dict[str, type]) -> None:
    """Register the root, optimizer and task schemas, and the ``uid`` and ``gpus`` resolvers."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, schema in OPTIM_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    for name, schema in task_schemas.items():
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
    from experiments.devices import gpus_for  # imports torch: only a launcher asks

    return gpus_for(spec) or None


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into checked dataclasses, raising :class:`ConfigError` if bad.

    ``OmegaConf.to_object`` builds each dataclass, which runs its ``__post_init__`` checks.
    """
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf wraps errors raised inside __post_init__
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
