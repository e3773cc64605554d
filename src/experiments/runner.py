"""One run, end to end: validate the config, open the MLflow run, execute the task.

:func:`run` works on a composed config and needs no Hydra, so tests can call it
directly; ``experiments.__main__`` is the thin Hydra entry point around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

import experiments
from experiments import config, devices, live, liveness, optimizers, signals, startup, uris
from experiments.context import TaskContext
from experiments.journal import Header
from experiments.recording import Recorder
from experiments.tasks import TASKS

MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"

log = logging.getLogger(__name__)

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
        delivery: how the run's records fared on their way to the store (None if skipped,
            or still ``pending`` with ``defer_delivery``).
    """

    objective: float | None
    run_id: Optional[str]
    skipped: bool = False
    delivery: Optional[live.Delivery] = None
    pending: Optional[live.PendingDelivery] = None

    @property
    def recorded(self) -> bool:
        """Whether the store holds the whole run (a skipped run was recorded before)."""
        return self.delivery is None or self.delivery.recorded


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
    parent_journal: str | None = None,
    defer_delivery: bool = False,
    run_name: str | None = None,
) -> Result:
    """Execute the task that ``cfg`` names and record it as one MLflow run.

    Everything the run records goes to its journal in ``output_dir`` first, and from there
    to the store (see ``experiments.live``); a signal ends the run KILLED.

    Args:
        cfg: a composed config (the root of ``conf/config.yaml``), without the hydra node.
        overrides: the command-line overrides that produced it; they name the run.
        output_dir: the run's local directory (Hydra's output directory); a new directory
            under ``outputs/adhoc`` when None.
        parent_run_id: the sweep's parent run, when this run is a job of a sweep.
        parent_journal: the journal id of the sweep's parent run (how a sweep kept offline
            finds its parent when uploaded).
        defer_delivery: a finished run returns before its last records are confirmed in
            the store; ``Result.pending`` says how they fared (a sweep's next job runs
            meanwhile).
        run_name: the run's name unless ``tracking.run_name`` sets one; by default the
            task and the overrides.

    Returns:
        The objective, the run that recorded it, and how its records fared.

    Raises:
        ConfigError: a bad setting; raised before any run is started when the config itself
            is bad, inside the run (which ends FAILED) when this machine cannot honour it.
        RunFailure: the task could not finish (divergence, out of memory); the run is FAILED.
        signals.Interrupted: a signal stopped the run; it ended KILLED.
    """
    started = time.perf_counter()
    settings = config.validate(cfg)
    optimizers.build(cfg.optim)  # a bad optimizer setting is refused before any run starts
    task_name = settings.task.name
    task = TASKS[task_name]
    tracking = settings.tracking
    experiment = tracking.experiment or task_name
    identity = config_hash(cfg)
    in_sweep = parent_run_id is not None or parent_journal is not None
    run_name = tracking.run_name or run_name or run_name_for(task_name, overrides)
    out = Path(output_dir) if output_dir is not None else adhoc_directory()
    out.mkdir(parents=True, exist_ok=True)
    tags = {**base_tags(task_name, overrides), CONFIG_HASH_TAG: identity}
    if parent_run_id is not None:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    header = journal_header(tracking, experiment, run_name, out)
    header.config_hash, header.parent_run_id = identity, parent_run_id
    header.parent_journal = parent_journal
    skip = None
    if settings.skip_existing:
        skip = {"config_hash": identity, "key": getattr(task, "OBJECTIVE", None)}
    with signals.handling():
        recording = live.open_run(
            out, header, tags, store_of(tracking), live_settings(tracking), skip
        )
        status, error, hurry = "FAILED", None, False
        try:
            prepare(task_name)  # the task's own start-up, while the store opens
            # A job of a sweep whose parent this process created knows its store answers:
            # it need not wait for its run's creation (collected when it ends) unless it
            # may skip.
            if not (defer_delivery and skip is None):
                skipped = recording.started(fallback=in_sweep)
                if skipped is not None:
                    log.info("skipped: this config already FINISHED as run %s", skipped["run_id"])
                    return Result(skipped["objective"], skipped["run_id"], skipped=True)
                if recording.unrecorded is not None:
                    # One job of a sweep: keep it in its journal and let the sweep go on.
                    log.warning("%s; this job is kept offline in %s", recording.unrecorded, out)
            objective = _run_task(task, settings, cfg, overrides, recording.recorder, out, started)
            status = "FINISHED"
        except BaseException as failure:
            stop = signals.stop_reason(failure)
            if stop is not None:
                status, error, hurry = "KILLED", stop, True
            else:
                error = _first_line(failure)
            raise
        finally:
            if not recording.discarded:  # a run refused or skipped before it began is not
                delivery = _close(recording, status, error, hurry, defer_delivery)
        signals.raise_deferred()
    if isinstance(delivery, live.PendingDelivery):
        return Result(objective, recording.run_id, pending=delivery)
    if delivery.recorded:
        log.info("run %r FINISHED in experiment %s (%s)", run_name, experiment, header.tracking_uri)
    return Result(objective, recording.run_id, delivery=delivery)


def _close(
    recording: live.LiveRun, status: str, error: str | None, hurry: bool, defer: bool
) -> live.Delivery | live.PendingDelivery:
    wait = not (defer and status == "FINISHED")
    with signals.deferred():
        delivery = recording.close(status, error, hurry=hurry, wait=wait)
    if isinstance(delivery, live.Delivery) and not delivery.recorded:
        if status != "FINISHED" and not delivery.offline:
            log.warning("%s", not_recorded_line(delivery))
    return delivery


def prepare(task_name: str) -> None:
    """What a task's start-up imports anyway (its ``prepare``), done while a store opens."""
    prepare_task = getattr(TASKS.get(task_name), "prepare", None)
    if prepare_task is not None:
        prepare_task()
    startup.settle()  # the command's start-up ends here (see experiments.startup)


def store_of(tracking: Any) -> live.Store | None:
    """The store ``tracking`` settings name, resolved here (None: kept offline)."""
    if tracking.offline:
        return None
    uri, source = uris.resolve(tracking.uri)
    uris.check(uri, source)
    return live.Store(uris.absolute(uri), source, float(tracking.timeout_s))


def live_settings(tracking: Any) -> live.Settings:
    """How a live run retries its store and beats (``tracking.*``)."""
    return live.Settings(
        retry_s=float(tracking.retry_s),
        heartbeat_s=float(tracking.heartbeat_s),
        lost_after_s=float(tracking.lost_after_s),
    )


def _run_task(
    task: ModuleType,
    settings: config.Config,
    cfg: DictConfig,
    overrides: Sequence[str],
    rec: Recorder,
    out: Path,
    started: float,
) -> float | None:
    # A password typed into a tracking URI never reaches the store (see uris.scrub).
    rec.log_text(uris.scrub(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
    rec.log_text(OmegaConf.to_yaml(list(overrides)), "overrides.yaml")
    device = devices.resolve(settings.device)
    rec.log_params(task_params(task, settings, cfg, device))
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
    # total: until the results are handed over; the run's end sends what is left
    total_s = time.perf_counter() - started
    rec.log_metrics({"time/setup_s": setup_s, "time/task_s": task_s, "time/total_s": total_s})
    return objective


def task_params(
    task: ModuleType, settings: config.Config, cfg: DictConfig, device: torch.device
) -> dict[str, Any]:
    """The params of a run: the settings that affect its task, with the values it used.

    The optimizer's settings only where the task uses an optimizer, no tracking settings
    (the run's ``config.yaml`` artifact keeps the whole resolved config), the device that
    ``auto`` resolved to, and what the task resolves itself (its ``resolved_params``: a
    matmul's shape and thread count).
    """
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    uses_optimizer = getattr(task, "USES_OPTIMIZER", False)
    kept = {
        key: uris.scrub(value) if isinstance(value, str) else value
        for key, value in params.items()
        if not key.startswith(("tracking.", "skip_existing"))
        and (uses_optimizer or not key.startswith("optim."))
    }
    kept["device"] = str(device)
    resolved = getattr(task, "resolved_params", None)
    if resolved is not None:
        kept.update({f"task.{key}": value for key, value in resolved(settings.task).items()})
    return kept


def journal_header(tracking: Any, experiment: str, run_name: str, out: Path) -> Header:
    """The journal header of a run recorded with ``tracking`` settings into ``out``."""
    uri = uris.absolute(uris.resolve(tracking.uri)[0])
    return Header(
        tracking_uri=uris.redact(uri),
        experiment=experiment,
        run_name=run_name,
        output_dir=str(out.resolve()),
        host=liveness.host(),
        pid=os.getpid(),
        pid_started=liveness.process_started(os.getpid()),
        offline=bool(tracking.offline),
    )


def not_recorded_line(delivery: live.Delivery) -> str:
    """What to tell the user about a run whose records did not all reach the store."""
    directory = delivery.journal.parent
    return (
        f"{delivery.reason}; the run's records are kept in {directory}; upload them with: "
        f"python -m experiments.sync {directory}"
    )


def adhoc_directory() -> Path:
    """A fresh directory for a run started without one (``outputs/adhoc/<time>-<id>``)."""
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return Path("outputs") / "adhoc" / f"{stamp}-{uuid.uuid4().hex[:6]}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


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
