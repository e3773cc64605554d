"""One run, end to end: validate the config, open the run's record, execute the task.

:func:`run` works on a composed config and needs no Hydra, so tests can call it directly;
the command line (``experiments.command``) is the thin Hydra entry point around it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import checkpoints, config, devices, optimizers, process, record, signals, tasks
from experiments.api import Task
from experiments.config import config_hash
from experiments.errors import ConfigError, Pruned, first_line
from experiments.names import (
    CHECKPOINT_TAG,
    CODE_DIFF_FILE,
    CONFIG_HASH_TAG,
    ENVIRONMENT_FILE,
    OVERRIDES_FILE,
    PARENT_TAG,
    TASK_CODE_DIFF_FILE,
)
from experiments.record import uris
from experiments.record.journal import Header
from experiments.runner import environment, resumption
from experiments.runner.identity import (
    base_tags,
    extra_tags,
    run_name_for,
    task_params,
)
from experiments.runner.store import (
    adhoc_directory,
    journal_header,
    live_settings,
    not_recorded_line,
    store_of,
)
from experiments.tasks import registry
from experiments.tasks.context import Recorder, TaskContext

log = logging.getLogger(__name__)


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
    delivery: Optional[record.Delivery] = None
    pending: Optional[record.PendingDelivery] = None

    @property
    def recorded(self) -> bool:
        """Whether the store holds the whole run (a skipped run was recorded before)."""
        return self.delivery is None or self.delivery.recorded


@dataclass
class Plan:
    """A run as its config decides it, before anything is recorded.

    Attributes:
        settings: the validated config.
        cfg: the composed config it came from.
        overrides: the command-line overrides that produced it.
        task: the task (:class:`experiments.api.Task`).
        directory: the run's own directory (its journal, its files).
        header: its journal's header (where it goes, who writes it).
        tags: its first tags.
        skip: what ``skip_existing`` looks for (None: run whatever the store holds).
        in_sweep: a job of a sweep (a store that does not answer keeps it offline).
        resume: the run it continues, from which checkpoint (None: a fresh run, unless
            ``skip_existing`` finds one to continue).
        checkpoints: where its checkpoints go.
    """

    settings: config.Config
    cfg: DictConfig
    overrides: Sequence[str]
    task: Task
    directory: Path
    header: Header
    tags: dict[str, str]
    skip: Optional[dict]
    in_sweep: bool
    resume: Optional[resumption.Resumption] = None
    checkpoints: Optional[Path] = None


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
    judge: Optional[Callable[[float, int], Optional[str]]] = None,
) -> Result:
    """Execute the task that ``cfg`` names and record it as one MLflow run.

    Everything the run records goes to its journal in ``output_dir`` first, and from there
    to the store (see ``experiments.record``); a signal ends the run KILLED.

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
        judge: a search's judge of this trial (``sweeps.search.trial``): what the task
            reports (``ctx.recorder.report``) goes to it, and it may stop the run early.

    Returns:
        The objective, the run that recorded it, and how its records fared.

    Raises:
        ConfigError: a bad setting; raised before any run is started when the config itself
            is bad, inside the run (which ends FAILED) when this machine cannot honour it.
        RunFailure: the task could not finish (divergence, out of memory); the run is FAILED.
        signals.Interrupted: a signal stopped the run; it ended KILLED. (One that comes while
            a FINISHED run is closed is left for the caller: see ``signals.raise_deferred``.)
        Pruned: the search's pruner stopped the trial; the run ended KILLED, marked pruned.
    """
    started = time.perf_counter()
    planned = plan(cfg, overrides, output_dir, parent_run_id, parent_journal, run_name)
    tracking = planned.settings.tracking
    with signals.handling():
        # Once its journal exists, the run is closed whatever comes: a signal while it opens
        # is raised inside the block below, which ends it KILLED.
        with signals.deferred():
            resume = planned.resume
            recording = record.open_run(
                planned.directory,
                planned.header,
                planned.tags,
                store_of(tracking),
                live_settings(tracking),
                planned.skip,
                reopen=resume.run_id if resume is not None and not resume.new_run else None,
                drain=resume.drain if resume is not None else (),
            )
        end = _End()
        recording.recorder.judge = judge
        try:
            signals.raise_deferred()
            prepare(planned.task)  # the task's own start-up, while the store opens
            skipped = _wait_for_the_run(recording, planned, defer_delivery)
            if skipped is not None:
                return skipped
            resumed = _resumed(recording, planned)
            objective = _run_task(planned, recording.recorder, started, _run_id(recording), resumed)
            signals.raise_swallowed()
            end.status = "FINISHED"
        except BaseException as failure:
            end.failed(failure)
            raise
        finally:
            if not recording.discarded:  # a run refused or skipped before it began is not
                delivery = _close(recording, end, defer_delivery)
        # A signal that came while the run FINISHED was being closed stops what comes next,
        # not this run: the caller raises it (signals.raise_deferred) once it has taken the
        # result (a sweep's job writes its outcome first), or the outermost signals.handling
        # does, as this block ends.
    if isinstance(delivery, record.PendingDelivery):
        return Result(objective, recording.run_id, pending=delivery)
    if delivery.recorded:
        header = planned.header
        log.info(
            "run %r FINISHED in experiment %s (%s)",
            header.run_name,
            header.experiment,
            header.tracking_uri,
        )
    return Result(objective, recording.run_id, delivery=delivery)


def plan(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    parent_run_id: str | None = None,
    parent_journal: str | None = None,
    run_name: str | None = None,
) -> Plan:
    """Validate ``cfg`` and decide the run it describes (see :func:`execute`'s arguments).

    Raises:
        ConfigError: a bad setting (nothing is recorded).
    """
    task = tasks.load(config.task_name_of(cfg))
    settings = config.validate(cfg, registry.settings_of(task))
    task_name = task.name
    if task.uses_optimizer:  # a bad optimizer setting is refused before any run starts
        optimizers.build(cfg.optim)
    tracking = settings.tracking
    identity = config_hash(cfg)
    name = tracking.run_name or run_name or run_name_for(task_name, overrides)
    out = Path(output_dir) if output_dir is not None else adhoc_directory()
    out.mkdir(parents=True, exist_ok=True)
    tags = {
        **base_tags(task, overrides),
        CONFIG_HASH_TAG: identity,
        **extra_tags(tracking),
    }
    if parent_run_id is not None:
        tags[PARENT_TAG] = parent_run_id
    header = journal_header(tracking, tracking.experiment or task_name, name, out)
    header.config_hash, header.parent_run_id = identity, parent_run_id
    header.parent_journal = parent_journal
    header.note = reproduce_note(header.tracking_uri)
    skip = None
    if settings.skip_existing:
        skip = {"config_hash": identity, "key": task.objective_key}
    in_sweep = parent_run_id is not None or parent_journal is not None
    resume = resumption.plan(settings, identity, out, header)
    if resume is not None and not resume.new_run:
        # Kept offline, the attempt names the run it continues: sync reopens it there.
        header.resumes, header.first = resume.run_id, resume.earlier
    if resume is not None and resume.checkpoint is not None and not resume.new_run:
        where = resume.checkpoint.parent  # the run's checkpoints go on where they were
    else:
        where = resumption.checkpoint_dir(settings, header.journal_id, out)
        if settings.checkpoint.dir:
            checkpoints.check_directory(where)
    return Plan(settings, cfg, overrides, task, out, header, tags, skip, in_sweep, resume, where)


def prepare(task: Optional[Task]) -> None:
    """What a task's start-up imports anyway (its ``prepare``), and what is slow to find
    about where it runs (git, the packages' versions), done while a store opens.

    ``task`` None: no task runs in this process (a sweep's parent whose launcher starts
    its jobs in other processes), only where it runs is found.
    """
    if task is not None:
        task.function()  # its module (named by "module:function"): imported while waiting
    prepare_task = task.function("prepare") if task is not None else None
    if prepare_task is not None:
        prepare_task()
    environment.prepare(task)
    process.settle()  # the command's start-up ends here (see experiments.process)


def _wait_for_the_run(
    recording: record.LiveRun, planned: Plan, defer_delivery: bool
) -> Optional[Result]:
    """Collect the store's answer to the run's creation; a Result when it was skipped.

    A job of a sweep whose parent this process created knows its store answers: it need
    not wait for its run's creation (collected when it ends) unless it may skip.
    """
    if defer_delivery and planned.skip is None and planned.resume is None:
        return None
    skipped = recording.started(fallback=planned.in_sweep)
    if skipped is not None:
        log.info("skipped: this config already FINISHED as run %s", skipped["run_id"])
        return Result(skipped["objective"], skipped["run_id"], skipped=True)
    if recording.unrecorded is not None:
        # One job of a sweep: keep it in its journal and let the sweep go on.
        log.warning("%s; this job is kept offline in %s", recording.unrecorded, planned.directory)
    return None


def _run_task(
    planned: Plan,
    rec: Recorder,
    started: float,
    run_of: Callable[[], Optional[str]],
    resumed: Optional[dict[str, Any]] = None,
) -> float | None:
    settings, cfg = planned.settings, planned.cfg
    # A password typed into a tracking URI never reaches the store (see uris.scrub).
    rec.log_text(uris.scrub(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
    rec.log_text(OmegaConf.to_yaml(list(planned.overrides)), OVERRIDES_FILE)
    apply_torch_settings(settings)
    try:
        device = devices.resolve(settings.device)
    except ConfigError:
        # A job this machine cannot run (device=cuda here) still carries its params, so
        # that a filter on them in the UI finds it (the device as asked for), and says
        # where it was tried.
        rec.log_params(task_params(planned.task, settings, cfg, settings.device))
        record_environment(rec, None, task=planned.task)
        raise
    task = planned.task
    params = task_params(task, settings, cfg, device)
    rec.log_params(params)
    rec.set_tags({"device": str(device), "device.name": devices.describe(device)})
    threads = params.get(f"task.{task.threads}") if task.threads else None
    record_environment(rec, device, threads, task)
    run = task.function()
    seed_everything(settings.seed)
    ctx = TaskContext(
        device=device,
        recorder=rec,
        optim=cfg.optim,
        seed=settings.seed,
        output_dir=planned.directory,
        log_every=settings.tracking.log_every,
        run_of=run_of,
    )
    ctx.checkpoints = _checkpoints(planned, rec, ctx, resumed)
    setup_s = time.perf_counter() - started
    with signals.task_checks():
        try:
            objective = run(settings.task, ctx)
        finally:
            ctx.checkpoints.wait()  # a checkpoint being written is written whole
        # A stop the task saw and did not act on (it returned all the same): the run ends
        # as the signal asked, KILLED.
        signals.raise_deferred()
    task_s = time.perf_counter() - started - setup_s
    # total: until the results are handed over; the run's end sends what is left
    total_s = time.perf_counter() - started
    rec.log_metrics({"time/setup_s": setup_s, "time/task_s": task_s, "time/total_s": total_s})
    return objective


def _resumed(recording: record.LiveRun, planned: Plan) -> Optional[dict[str, Any]]:
    """How this run continues an earlier one (None: it does not): the checkpoint to continue
    from, and by metric the last step the earlier attempts recorded (the store's answer to
    reopening it; a new run from a checkpoint has none)."""
    resume, reopened = planned.resume, recording.resumed
    if reopened is None and resume is None:
        return None
    checkpoint = resume.checkpoint if resume is not None else None
    if checkpoint is None and reopened is not None and reopened.get("checkpoint"):
        checkpoint = Path(reopened["checkpoint"])  # skip_existing found it, in another sweep
    if checkpoint is None and planned.checkpoints is not None:
        checkpoint = checkpoints.latest_path(planned.checkpoints)  # where this run keeps them
    if reopened is not None:
        recorded = dict(reopened.get("steps") or {})
    elif resume is not None and not resume.new_run:  # kept offline: its journals say
        recorded = resumption.recorded_in(resume.drain)
    else:
        recorded = {}
    found = checkpoints.manifest_of(checkpoint) if checkpoint is not None else None
    step = int(found["step"]) if found else None
    why = resume.why if resume is not None else "skip_existing"
    which = f"run {recording.run_id}" if recording.run_id else "its run (kept offline)"
    where = f"its checkpoint at step {step}" if step is not None else "the start (no checkpoint)"
    log.info("continues %s from %s (%s)", which, where, why)
    return {"checkpoint": checkpoint, "step": step, "recorded": recorded}


def _checkpoints(
    planned: Plan, rec: Recorder, ctx: TaskContext, resumed: Optional[dict[str, Any]]
) -> checkpoints.Checkpoints:
    """The run's checkpoints (``ctx.checkpoints``), continuing from where ``resumed`` says."""
    settings, header = planned.settings.checkpoint, planned.header
    first = header.first or header.journal_id
    told: list[bool] = []

    def committed(path: Path) -> None:  # on the writing thread: journal writes are locked
        if not told:
            told.append(True)
            rec.set_tags({CHECKPOINT_TAG: str(path.parent)})
        if hasattr(rec, "log_checkpoint"):  # the store keeps the latest, for another machine
            rec.log_checkpoint(path)

    resume_from = (resumed or {}).get("checkpoint")
    if resumed is not None:
        if resumed.get("recorded") and hasattr(rec, "recorded"):
            rec.recorded = resumed["recorded"]  # steps run again are not recorded twice
        tags = resumption.describe(planned.resume or resumption.Resumption(None), resumed["step"])
        if tags:
            rec.set_tags(tags)
    return checkpoints.Checkpoints(
        planned.checkpoints or planned.directory / resumption.CHECKPOINTS_DIR,
        every_steps=settings.every_steps,
        every_s=settings.every_s,
        keep=settings.keep,
        # The run's id when a checkpoint is saved: a job of a sweep need not wait for it.
        meta=lambda: {"config_hash": header.config_hash, "journal_id": first, "run_id": ctx.run_id},
        resume_from=resume_from,
        generator=ctx.generator,
        committed=committed,
    )


def seed_everything(seed: int) -> None:
    """Seed torch (every device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _run_id(recording: record.LiveRun) -> Callable[[], Optional[str]]:
    """How the task learns its run's id (``ctx.run_id``): known once the store has created
    the run; a job whose creation was not waited for waits for it when the task asks."""

    def run_id() -> Optional[str]:
        if recording.run_id is None and recording.service is not None:
            recording.started(fallback=True)
        return recording.run_id

    return run_id


def apply_torch_settings(settings: config.Config) -> None:
    """The run's own torch switches: float32 matmul precision, deterministic algorithms.

    Set for every run, so a job of a sweep never inherits the previous job's. cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` for deterministic results; it is set (kept when the user
    set it) before the run touches CUDA.
    """
    torch.set_float32_matmul_precision(settings.float32_matmul_precision)
    if settings.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        process.set_env("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(settings.deterministic)


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """``torch.use_deterministic_algorithms``, called only to change what is set.

    The call imports torch's compiler (``torch._inductor``, ``torch._dynamo``: about 1.9 s
    of CPU on a 2-core VM) to set its flag too; a run does not compile, and its torch starts
    with the flag off, as a run asks by default. Once that module is loaded, the call is
    cheap and always made, so the two flags never part.
    """
    current = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if current != (mode, warn_only) or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)


@contextmanager
def torch_settings_kept() -> Iterator[None]:
    """Leave torch's process-wide switches as found: the runs inside set their own
    (:func:`apply_torch_settings`), and a caller in the same process (a script, a notebook,
    a test) gets its own back when the command ends."""
    precision = torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        set_deterministic(deterministic, warn_only=warn_only)


def record_environment(
    rec: Recorder,
    device: Optional[torch.device],
    threads: Optional[Any] = None,
    task: Optional[Task] = None,
) -> None:
    """Where the run ran (``environment.json``, a dirty tree's ``code.diff``, a few tags).

    ``threads``: the CPU threads the task itself uses (matmul's ``task.threads``), where it
    sets its own: recorded as torch's threads. The process's default is always beside them
    (``default_threads``), so two runs' records differ there only where their machines do.
    """
    found = environment.collect(device, task)
    found["torch"]["default_threads"] = found["torch"]["threads"]
    if threads is not None:
        found["torch"]["threads"] = int(threads)
    code = found["code"]
    diff = code.pop("diff", "")
    task_diff = found.get("task", {}).get("code", {}).pop("diff", "")
    rec.log_text(json.dumps(found, indent=2, default=str), ENVIRONMENT_FILE)
    if diff:
        rec.log_text(diff, CODE_DIFF_FILE)
    if task_diff:  # the task's own checkout, where it is not this package's
        rec.log_text(task_diff, TASK_CODE_DIFF_FILE)
    rec.set_tags(environment.tags(found))


def reproduce_note(tracking_uri: str) -> str:
    """The run's description in MLflow's UI: the one command that runs it again.

    ``{run_id}`` becomes the run's id when the store creates it.
    """
    return (
        "Run it again, and compare the result with this run's:\n\n"
        f"    python -m experiments.rerun {{run_id}} --from {uris.scrub(tracking_uri)}\n\n"
        "(add overrides to change a setting, e.g. device=cuda; see the README, Reproducing a run)"
    )


@dataclass
class _End:
    """How the run ends: FINISHED, FAILED with the error's first line, or KILLED."""

    status: str = "FAILED"
    error: Optional[str] = None
    hurry: bool = False  # a signal: the last records get a few seconds, no more

    def failed(self, failure: BaseException) -> None:
        stop = signals.stop_reason(failure)
        if stop is not None:
            self.status, self.error, self.hurry = "KILLED", stop, True
        elif isinstance(failure, Pruned):  # stopped early on purpose, not a failure
            self.status, self.error = "KILLED", first_line(failure)
        else:
            self.error = first_line(failure)


def _close(
    recording: record.LiveRun, end: _End, defer: bool
) -> record.Delivery | record.PendingDelivery:
    wait = not (defer and end.status == "FINISHED")
    with signals.deferred():
        delivery = recording.close(end.status, end.error, hurry=end.hurry, wait=wait)
    if isinstance(delivery, record.Delivery) and not delivery.recorded:
        if end.status != "FINISHED" and not delivery.offline:
            log.warning("%s", not_recorded_line(delivery))
    return delivery
