"""The root config's typed schema, and the value checks every group uses.

Every config group is backed by a dataclass: the root and ``tracking`` here, ``optim`` in
:mod:`experiments.optimizers`, each task's registered with its task (``experiments.api``).
Each YAML file under ``conf/`` extends one of these schemas through its defaults list
(``- /minimize_schema@_here_``), so unknown keys and wrong types fail while Hydra composes
the config (``experiments.registration`` puts them in Hydra's ConfigStore). Range checks
live next to the values, in ``__post_init__``: they run when :func:`validate` turns the
composed config into these dataclasses, before any run starts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from experiments.errors import ConfigError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's words


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
    # The recording process's own time to answer, beyond retry_s + timeout_s: past it the
    # run takes it for stopped or stuck, ends it and keeps its records in the journal.
    recorder_wait_s: float = 60.0
    # After a signal (Ctrl-C, a cluster's SIGTERM), how long a run waits for its last records
    # to reach the store before it exits, and a sweep for its running jobs to close.
    stop_wait_s: float = 8.0
    tags: Dict[str, str] = field(default_factory=dict)  # extra tags on every run (and parent)

    def __post_init__(self) -> None:
        check_positive_int("tracking.log_every", self.log_every)
        check_positive("tracking.timeout_s", self.timeout_s)
        check_non_negative("tracking.retry_s", self.retry_s)
        check_positive("tracking.heartbeat_s", self.heartbeat_s)
        check_positive("tracking.lost_after_s", self.lost_after_s)
        check_positive("tracking.recorder_wait_s", self.recorder_wait_s)
        check_positive("tracking.stop_wait_s", self.stop_wait_s)
        if self.lost_after_s < 2 * self.heartbeat_s:
            raise ConfigError(
                "tracking.lost_after_s must be at least twice tracking.heartbeat_s "
                f"({2 * self.heartbeat_s:g}), got {self.lost_after_s:g}"
            )
        if self.experiment is not None and not self.experiment.strip():
            raise ConfigError("tracking.experiment must not be empty, got ''")


@dataclass
class CheckpointConfig:
    """How often a task that checkpoints saves its state (``ctx.checkpoints``), and where."""

    every_steps: Optional[int] = 1000  # a checkpoint every N steps (null: not by steps)
    every_s: Optional[float] = 300.0  # and every T seconds (null: not by time)
    keep: int = 2  # checkpoints kept: the latest and the one before
    dir: Optional[str] = None  # null: checkpoints/ in the run's own directory

    def __post_init__(self) -> None:
        if self.every_steps is not None:
            check_positive_int("checkpoint.every_steps", self.every_steps)
        if self.every_s is not None:
            check_positive("checkpoint.every_s", self.every_s)
        check_positive_int("checkpoint.keep", self.keep)
        if self.dir is not None and not str(self.dir).strip():
            raise ConfigError("checkpoint.dir must not be empty, got ''")


@dataclass
class ResumeConfig:
    """A run to continue from its checkpoint (``python -m experiments.resume`` sets these);
    how, not what: left out of a run's identity, params and name."""

    run: Optional[str] = None  # the run to continue, the same MLflow run
    checkpoint: Optional[str] = None  # its checkpoint directory (null: the run's own)
    new_run: bool = False  # start a new run from that checkpoint instead
    # A checkpoint made with another config: start afresh instead of refusing (a search that
    # retries a trial its predecessor abandoned, under a command that changed since).
    else_fresh: bool = False

    def __post_init__(self) -> None:
        if self.new_run and self.checkpoint is None and self.run is None:
            raise ConfigError("resume.new_run=true needs resume.run or resume.checkpoint")


@dataclass
class Config:
    """The root of every composed config."""

    task: Any = MISSING
    optim: Any = MISSING
    device: str = "auto"
    seed: int = 0
    float32_matmul_precision: str = "highest"  # torch.set_float32_matmul_precision
    deterministic: bool = False  # torch.use_deterministic_algorithms
    skip_existing: bool = False
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)

    def __post_init__(self) -> None:
        from experiments.devices import check_spec

        check_spec(self.device)
        check_choice("float32_matmul_precision", self.float32_matmul_precision, MATMUL_PRECISIONS)
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if self.skip_existing and self.tracking.offline:
            raise ConfigError(
                "skip_existing=true looks up finished runs in the tracking store, which "
                "tracking.offline=true does not reach; use one or the other"
            )


# Where results are recorded, whether to skip, how often to checkpoint and which run to
# continue: none of them changes what is computed.
IDENTITY_EXCLUDED = ("tracking", "skip_existing", "checkpoint", "resume")


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


def task_name_of(cfg: DictConfig) -> str:
    """The name of the task ``cfg`` selects (``task.name``); a config without one is one
    line naming the key."""
    name = OmegaConf.select(cfg, "task.name", default=None, throw_on_missing=False)
    if not isinstance(name, str) or not name:
        raise ConfigError("task.name is not set: the task's config must name its task")
    return name


def validate(cfg: DictConfig, task_settings: Optional[type] = None) -> Config:
    """Turn a composed config into checked dataclasses, raising :class:`ConfigError` if bad.

    ``OmegaConf.to_object`` builds each dataclass, which runs its ``__post_init__`` checks.
    ``task_settings``: the task's settings dataclass; a ``task`` node composed without it (a
    YAML file that does not extend its schema) is checked against it here.
    """
    if task_settings is not None and OmegaConf.get_type(cfg, "task") is not None:
        if not _built_from(cfg, task_settings):
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.task = _as_settings(cfg.task, task_settings)
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except ConfigError:
        raise
    except Exception as error:  # OmegaConf wraps errors raised inside __post_init__
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise


def _built_from(cfg: DictConfig, settings: type) -> bool:
    kind = OmegaConf.get_type(cfg, "task")
    return isinstance(kind, type) and issubclass(kind, settings)


def _as_settings(node: Any, settings: type) -> DictConfig:
    """``node`` merged into ``settings``: a wrong key or type is one line naming it."""
    try:
        return OmegaConf.merge(OmegaConf.structured(settings), node)
    except Exception as error:  # OmegaConf's own: a key the dataclass lacks, a bad type
        message = str(error).splitlines()[0]
        key = getattr(error, "full_key", None)
        value = OmegaConf.select(node, key, default=None) if key else None
        where = f"task.{key}={value}" if key and value is not None else f"task.{key or ''}"
        raise ConfigError(f"{where.rstrip('.')}: {message}") from None
