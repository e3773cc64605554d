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

It lives in ``hydra_plugins`` because Hydra only loads launchers from there; it is defined
only where the ``sweeps`` extra (hydra-submitit-launcher) is installed.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it
# is in sys.modules, where dataclasses would look its string annotations up.
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Set

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from experiments.errors import RunFailure
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

if _HydraSlurmLauncher is not None:

    @dataclass
    class ExperimentsSlurmConf(SlurmQueueConf):
        """``hydra/launcher=experiments_slurm``: submitit_slurm's settings, this launcher."""

        _target_: str = f"{__name__}.SlurmLauncher"

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
            params = []
            for index, overrides in enumerate(job_overrides, start=initial_job_idx):
                self._log_job(index, overrides)
                state = Singleton.get_state()
                params.append(
                    (list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", state)
                )
            jobs = self._submit(submitit, job_overrides, params)
            lost = wait_for_all(jobs, accounting=has_accounting(jobs))
            return [
                result_of(job, index, overrides, sweep_dir, lost)
                for job, (overrides, _, index, _, _) in zip(jobs, params)
            ]

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
                if key not in ("submitit_folder", "max_num_timeout")
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


def cancel(jobs: Sequence[Any]) -> None:
    """``scancel`` the arrays of ``jobs`` (a sweep that cannot start all of its jobs)."""
    arrays = array_ids(jobs)
    if not arrays:
        return
    try:
        subprocess.run(["scancel", *arrays], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("could not cancel Slurm jobs %s: %s", ", ".join(arrays), error)


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


def queued(jobs: Sequence[Any]) -> Optional[set[str]]:
    """The ids of ``jobs`` that Slurm's queue holds (one per array task), or None when
    ``squeue`` does not answer (the controller restarting, say)."""
    arrays = array_ids(jobs)
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i", "--jobs", ",".join(arrays)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(listed.split())


def wait_for_all(jobs: Sequence[Any], accounting: bool = True) -> set[str]:
    """Wait until every job has a result or Slurm says it ended (completed, failed, ...).

    A requeued job is pending again, so it is waited for too. Without ``accounting``, a job
    missing from Slurm's queue at :data:`LOOKS_GONE` consecutive looks has ended: the ids
    of such jobs without a result are returned.
    """
    pending = list(jobs)
    missing = {job.job_id: 0 for job in jobs}  # consecutive looks that did not find it
    asked = time.monotonic()
    while pending:
        if time.monotonic() - asked >= SACCT_EVERY_S:
            if accounting:
                pending[0].watcher.update()  # one sacct call for every job of the sweep
            else:
                held = queued(pending)
                if held is not None:  # squeue did not answer: no look counts
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
            time.sleep(POLL_S)
    return {job.job_id for job in jobs if missing[job.job_id] >= LOOKS_GONE and not has_result(job)}


def has_result(job: Any) -> bool:
    """Whether the job left its result file (what ``job.done()`` looks for first)."""
    folder = job.paths.folder
    try:  # refreshes a shared filesystem's view of the folder, as submitit does
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass
    return job.paths.result_pickle.exists()


def result_of(
    job: Any, index: int, overrides: Sequence[str], sweep_dir: Path, lost: Set[str] = frozenset()
) -> JobReturn:
    """The job's own result, or a failed one that says what Slurm says became of it.

    ``lost`` are the jobs that left the queue of a cluster without accounting, with no
    result. The reason the job itself recorded (in its ``outcome.json``) is added when it
    left one: a run ended by ``scancel`` or a time limit says so.
    """
    from submitit.core.utils import UncompletedJobError

    if job.job_id in lost:  # job.results() would wait for it forever
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
    error = RunFailure(f"job {index} (Slurm job {job.job_id}) ended {state}{why}")
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
