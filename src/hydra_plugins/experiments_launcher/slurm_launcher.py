"""The launcher of ``experiment=slurm``: Hydra's submitit Slurm launcher, waiting for every job.

Hydra's own launcher collects the jobs' results in job order and raises at the first job
that ended without one (``scancel``, a time limit, the OOM killer), leaving the later jobs
running without the sweep, so the summary lists them RUNNING. And submitit asks Slurm
(``sacct``) about a job less and less often, up to every 10 minutes, so a dead job is
noticed late. This launcher asks Slurm every :data:`SACCT_EVERY_S` seconds, waits until
every job has ended, and turns each job that left no result into a failed job whose error
says, in one line, what Slurm says became of it.

On a cluster that keeps no accounting (``sacct`` fails), Slurm cannot say how a job ended,
but ``squeue`` still says which jobs it holds: a job missing from the queue at two
consecutive looks, with no result, has ended without one. So no sweep waits for a dead job.

Nor for a job that never ends: the wait is bounded by ``hydra.launcher.max_wait_min``
(:func:`max_wait_min`). The jobs that have not ended by then (held PENDING, still RUNNING,
or on a controller that no longer answers) are cancelled, and each becomes a failed job
whose error names the state Slurm last gave and that setting.

It lives in ``hydra_plugins`` because Hydra only loads launchers from there; it is defined
only where the ``sweeps`` extra (hydra-submitit-launcher) is installed.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it
# is in sys.modules, where dataclasses would look its string annotations up.
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from experiments.errors import ConfigError, RunFailure
from experiments.sweeps import resume
from experiments.sweeps.outcomes import read_outcomes

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _HydraSlurmLauncher,
    )
except ImportError:  # no sweeps extra: nothing to define
    _HydraSlurmLauncher = None

log = logging.getLogger(__name__)

SACCT_EVERY_S = 10.0  # how often Slurm's accounting is asked which jobs have ended
POLL_S = 1.0  # how often the jobs' result files are looked for
LOOKS_GONE = 2  # without accounting: looks at the queue a job must be missing from to be ended
# The default bound's allowance for queueing, on top of the jobs' own time limits: a busy
# cluster holds jobs for hours, over a weekend for a day or two; a job still held after
# three days is waiting for something that will not come (a --begin far away, a hold,
# resources the partition does not have).
QUEUE_ALLOWANCE_MIN = 3 * 24 * 60.0
WAIT_KEY = "hydra.launcher.max_wait_min"
# After the bound, how long the cancelled jobs get to leave the queue: Slurm sends SIGTERM,
# then SIGKILL KillWait (30 s by default) later; a running job closes its run in between.
CANCEL_WAIT_S = 90.0

if _HydraSlurmLauncher is not None:

    @dataclass
    class ExperimentsSlurmConf(SlurmQueueConf):
        """``hydra/launcher=experiments_slurm``: submitit_slurm's settings, this launcher."""

        _target_: str = f"{__name__}.SlurmLauncher"
        # How long the sweep waits for its jobs, in minutes, before it cancels those that
        # have not ended. None: the jobs' own time limits plus 3 days of queueing (see
        # max_wait_min); never unbounded.
        max_wait_min: Optional[float] = None

    # Its own option of the launcher group, so that hydra/launcher=submitit_local on the
    # command line still replaces all of it (the preset's rehearsal without a cluster).
    ConfigStore.instance().store(
        group="hydra/launcher",
        name="experiments_slurm",
        node=ExperimentsSlurmConf,
        provider="experiments",
    )

    class SlurmLauncher(_HydraSlurmLauncher):
        """``submitit_slurm`` that waits for every job and names the jobs that died."""

        def __init__(self, **params: Any) -> None:
            super().__init__(**params)
            self._gpus_cache: dict[tuple, Any] = {}  # see _gpus_of

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            import submitit

            assert self.config is not None and len(job_overrides) > 0
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            assert self.hydra_context is not None
            # skip_existing: a job already FINISHED is not queued at all.
            skipped = resume.already_finished(
                self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx
            )
            params = []
            for index, overrides in enumerate(job_overrides, start=initial_job_idx):
                self._log_job(index, overrides)
                if index in skipped:
                    continue
                state = Singleton.get_state()
                params.append(
                    (list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", state)
                )
            results = {index: _skipped(found) for index, found in skipped.items()}
            if params:
                submitted = [overrides for overrides, *_ in params]
                bound = max_wait_min(self.params, len(params))
                jobs = self._submit(submitit, submitted, params)
                unfinished = wait_for_all(jobs, accounting=has_accounting(jobs), max_wait=bound)
                for job, (overrides, _, index, _, _) in zip(jobs, params):
                    results[index] = result_of(job, index, overrides, sweep_dir, unfinished)
            return [results[index] for index in sorted(results)]

        def _submit(
            self, submitit: Any, job_overrides: Sequence[Sequence[str]], params: list[tuple]
        ) -> list[Any]:
            """One Slurm array per GPU count the jobs' devices need, the jobs in order.

            A sweep over ``device`` asks for each job's GPUs, not the default device's. If
            Slurm refuses an array, those it took are cancelled before the error goes on.
            """
            groups: dict[Any, list[int]] = {}
            for position, overrides in enumerate(job_overrides):
                groups.setdefault(self._gpus_of(overrides), []).append(position)
            jobs: list[Any] = [None] * len(params)
            submitted: list[Any] = []
            for gpus, positions in groups.items():
                # A fresh executor: updating one cannot unset a value (None means "keep").
                executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **self._executor_args())
                executor.update_parameters(**{**self._job_parameters(), "gpus_per_node": gpus})
                try:
                    array = executor.map_array(self, *zip(*(params[p] for p in positions)))
                except Exception as error:
                    cancel(submitted)
                    if len(groups) == 1:
                        raise
                    first = params[positions[0]][2]
                    cancelled = "; the jobs it had taken were cancelled" if submitted else ""
                    asked = "none" if gpus is None else gpus
                    raise RunFailure(
                        f"Slurm refused the array of job {first} (gpus_per_node={asked}): "
                        f"{detail_of(error)}{cancelled}"
                    ) from error
                submitted += array
                for position, job in zip(positions, array):
                    jobs[position] = job
            return jobs

        def _gpus_of(self, overrides: Sequence[str]) -> Any:
            """``hydra.launcher.gpus_per_node`` as the job's own config resolves it (its
            ``device``); one composition per distinct device, preset or launcher setting."""
            deciding = tuple(o for o in overrides if _decides_resources(o))
            if deciding not in self._gpus_cache:
                assert self.config is not None and self.hydra_context is not None
                config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                self._gpus_cache[deciding] = config.hydra.launcher.gpus_per_node
            return self._gpus_cache[deciding]

        def _executor_args(self) -> dict[str, Any]:
            args = {"folder": self.params["submitit_folder"]}
            if "max_num_timeout" in self.params:
                args[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
            return args

        def _job_parameters(self) -> dict[str, Any]:
            shared = set(BaseQueueConf.__dataclass_fields__)
            return {
                key if key in shared else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items()
                if key not in ("submitit_folder", "max_num_timeout", "max_wait_min")
            }

        @staticmethod
        def _log_job(index: int, overrides: Sequence[str]) -> None:
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))


def _decides_resources(override: str) -> bool:
    """Whether a job's override may change what its Slurm job asks for."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key in ("device", "experiment") or key.startswith("hydra.")


def array_ids(jobs: Sequence[Any]) -> list[str]:
    """The Slurm arrays the jobs belong to (``12`` for ``12_3``)."""
    return sorted({job.job_id.split("_")[0] for job in jobs})


def detail_of(error: BaseException) -> str:
    """The last line a failed Slurm command (or submitit) gave."""
    text = str(getattr(error, "stderr", None) or getattr(error, "output", None) or error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def max_wait_min(params: Mapping[str, Any], jobs: int) -> float:
    """How long a launch of ``jobs`` jobs waits for them, in minutes.

    ``hydra.launcher.max_wait_min`` when set. By default, what the jobs may take by their
    own settings plus :data:`QUEUE_ALLOWANCE_MIN` (3 days) of queueing: each round of
    ``array_parallelism`` jobs runs up to ``timeout_min`` per attempt, for up to
    ``max_num_timeout + 1`` attempts. For the preset's 30-minute jobs, a sweep of up to
    256 jobs waits 3 days and 30 minutes at most.

    Raises:
        ConfigError: the setting is not a positive number of minutes.
    """
    given = params.get("max_wait_min")
    if given is not None:
        if not given > 0:  # the schema makes it a number
            raise ConfigError(f"{WAIT_KEY} must be a positive number of minutes, got {given!r}")
        return float(given)
    rounds = math.ceil(jobs / max(1, int(params.get("array_parallelism") or 1)))
    attempts = 1 + int(params.get("max_num_timeout") or 0)
    return QUEUE_ALLOWANCE_MIN + rounds * attempts * float(params.get("timeout_min") or 0)


def cancel(jobs: Sequence[Any]) -> None:
    """``scancel`` the arrays of ``jobs`` (a sweep that cannot start all of its jobs)."""
    scancel(array_ids(jobs))


def scancel(ids: Sequence[str]) -> Optional[str]:
    """``scancel`` Slurm jobs (whole arrays, ``12``, or their tasks, ``12_3``); None when
    done, else why not (also logged as a warning)."""
    if not ids:
        return None
    try:
        subprocess.run(["scancel", *ids], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("could not cancel Slurm jobs %s: %s", ", ".join(ids), detail_of(error))
        return detail_of(error)
    return None


def has_accounting(jobs: Sequence[Any]) -> bool:
    """Whether ``sacct`` answers; a warning says what is done instead when it does not."""
    try:
        subprocess.run(
            ["sacct", "--noheader", "--jobs", ",".join(array_ids(jobs))],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return True
    except (OSError, subprocess.SubprocessError) as error:
        log.warning(
            "sacct does not answer (%s): without Slurm's accounting, a job that leaves the "
            "queue without a result (scancel, time limit, out of memory) is reported as ended, "
            "but not how",
            detail_of(error),
        )
        return False


def queued(jobs: Sequence[Any]) -> Optional[dict[str, str]]:
    """The ids of ``jobs`` that Slurm's queue holds (one per array task) and their states
    (``PENDING``, ``RUNNING``, ...), or None when ``squeue`` does not answer (the controller
    restarting, say)."""
    arrays = array_ids(jobs)
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i %T", "--jobs", ",".join(arrays)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.split(maxsplit=1) for line in listed.splitlines() if " " in line.strip())


@dataclass
class Unfinished:
    """The jobs :func:`wait_for_all` stopped waiting for without a result."""

    # Left the queue of a cluster without accounting: Slurm cannot say how they ended.
    gone: set[str] = field(default_factory=set)
    # Not ended when the wait's bound came: job id -> the end of its error line.
    cut: dict[str, str] = field(default_factory=dict)


def wait_for_all(
    jobs: Sequence[Any], accounting: bool = True, max_wait: float = math.inf
) -> Unfinished:
    """Wait until every job has a result or Slurm says it ended (completed, failed, ...),
    for ``max_wait`` minutes at most.

    A requeued job is pending again, so it is waited for too. Without ``accounting``, a job
    missing from Slurm's queue at :data:`LOOKS_GONE` consecutive looks has ended. The jobs
    that have not ended after ``max_wait`` minutes are cancelled (:func:`cut_short`).
    """
    pending = list(jobs)
    missing = {job.job_id: 0 for job in jobs}  # consecutive looks that did not find it
    seen: dict[str, str] = {}  # without accounting: the state the queue last gave each job
    cut: dict[str, str] = {}
    asked = time.monotonic()
    deadline = asked + max_wait * 60
    while pending:
        if time.monotonic() >= deadline:
            cut = cut_short(pending, max_wait, seen if not accounting else None)
            break
        if time.monotonic() - asked >= SACCT_EVERY_S:
            if accounting:
                pending[0].watcher.update()  # one sacct call for every job of the sweep
            else:
                held = queued(pending)
                if held is not None:  # squeue did not answer: no look counts
                    seen.update(held)
                    for job in pending:
                        missing[job.job_id] = 0 if job.job_id in held else missing[job.job_id] + 1
            asked = time.monotonic()
        if accounting:
            pending = [job for job in pending if not job.done()]
        else:  # job.done() would ask sacct, and warn each time it fails
            pending = [
                job for job in pending if not has_result(job) and missing[job.job_id] < LOOKS_GONE
            ]
        if pending:
            time.sleep(max(0.0, min(POLL_S, deadline - time.monotonic())))
    gone = {job.job_id for job in jobs if missing[job.job_id] >= LOOKS_GONE and not has_result(job)}
    return Unfinished(gone=gone, cut=cut)


def cut_short(
    jobs: Sequence[Any], max_wait: float, seen: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    """Cancel the jobs still waited for when the bound came; what to say of each.

    Slurm's queue is asked once more for their states: the jobs it holds are cancelled (all
    of them when it does not answer) and given :data:`CANCEL_WAIT_S` to leave it (a running
    job closes its run on Slurm's SIGTERM). A job that left its result meanwhile keeps it.

    Args:
        jobs: the jobs without a result.
        max_wait: the bound, in minutes, for the error lines.
        seen: the states the queue last gave the jobs, where Slurm keeps no accounting
            (None: ask submitit's cache of what ``sacct`` said).

    Returns:
        job id -> the end of its error line, e.g. ``still PENDING after the launcher's wait
        of 0.5 min (hydra.launcher.max_wait_min): cancelled``.
    """
    held = queued(jobs)
    doomed = [job.job_id for job in jobs if held is None or job.job_id in held]
    refused = scancel(doomed)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while doomed and refused is None and time.monotonic() < deadline:
        left = queued(jobs)
        if left is not None and not set(doomed) & set(left):
            break
        time.sleep(POLL_S)
    waited = f"after the launcher's wait of {max_wait:g} min ({WAIT_KEY})"
    ending = ": cancelled" if refused is None else f": could not cancel it ({refused})"
    cut = {}
    for job in jobs:
        if has_result(job):
            continue
        if held is None:
            last = _last_seen(job, seen)
            before = f" (last seen {last})" if last is not None else ""
            cut[job.job_id] = f"with Slurm not answering{before} {waited}{ending}"
        elif job.job_id in held:
            cut[job.job_id] = f"still {held[job.job_id]} {waited}{ending}"
        else:  # it left the queue as the bound came
            cut[job.job_id] = f"out of Slurm's queue without a result {waited}"
    return cut


def _last_seen(job: Any, seen: Optional[Mapping[str, str]]) -> Optional[str]:
    """The state Slurm last gave the job: at a look at the queue (``seen``), or else as
    ``sacct`` said (submitit's cache); None when it never said."""
    if seen is not None:
        return seen.get(job.job_id)
    state = job.watcher.get_state(job.job_id, mode="cache")
    return None if state == "UNKNOWN" else state


def has_result(job: Any) -> bool:
    """Whether the job left its result file (what ``job.done()`` looks for first)."""
    folder = job.paths.folder
    try:  # refreshes a shared filesystem's view of the folder, as submitit does
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass
    return job.paths.result_pickle.exists()


def result_of(
    job: Any,
    index: int,
    overrides: Sequence[str],
    sweep_dir: Path,
    unfinished: Optional[Unfinished] = None,
) -> JobReturn:
    """The job's own result, or a failed one that says what Slurm says became of it.

    ``unfinished`` are the jobs without a result that left the queue of a cluster without
    accounting, or that the wait's bound cancelled. The reason the job itself recorded (in
    its ``outcome.json``) is added when it left one: a run ended by ``scancel`` or a time
    limit says so.
    """
    from submitit.core.utils import UncompletedJobError

    if unfinished is None:
        unfinished = Unfinished()
    if job.job_id in unfinished.cut:  # job.results() would wait for it forever
        return _failed(
            overrides, f"job {index} (Slurm job {job.job_id}) {unfinished.cut[job.job_id]}"
        )
    if job.job_id in unfinished.gone:  # likewise
        state = "(no accounting: Slurm cannot say how)"
    else:
        try:
            return job.results()[0]
        except UncompletedJobError:
            state = job.watcher.get_state(job.job_id, mode="cache")
    recorded = next((o for o in read_outcomes(sweep_dir) if o.job == index), None)
    if recorded is not None and recorded.reason:
        why = f": {recorded.reason}"
    else:
        why = f" without a result; its log: {job.paths.stderr}"
    return _failed(overrides, f"job {index} (Slurm job {job.job_id}) ended {state}{why}")


def _skipped(found: "resume.Skipped") -> JobReturn:
    """A job found FINISHED before it was submitted: its objective, as if it had run."""
    return JobReturn(
        overrides=list(found.overrides),
        status=JobStatus.COMPLETED,
        _return_value=found.objective,
    )


def _failed(overrides: Sequence[str], line: str) -> JobReturn:
    error = RunFailure(line)
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
