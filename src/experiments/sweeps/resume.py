"""``skip_existing=true`` decided in the launching process: the jobs that already FINISHED.

A job of a sweep checks the store itself before it runs (``runner.execute``), and a job
whose config already FINISHED ends at once, SKIPPED. Where a job is a Slurm job, that check
costs a place in the queue and a process start on a node for each finished job: a resumed
sweep of 100 jobs with 95 done would queue 100. A launcher that submits jobs elsewhere asks
here first (:func:`already_finished`), with each job's config composed as the job will
compose it, and submits only the others; each job found gets its outcome (SKIPPED, its run,
its objective) as if it had run, so the summary and the report read the same.

The store is asked through the sweep's recording process (:func:`finished_runs`, called by
name), so this process still never imports MLflow. Whatever cannot be decided here (a job
whose config does not compose, a store that does not answer) is left to the job: it is
submitted and checks for itself, as before.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from experiments import config, record, tasks
from experiments.config import config_hash
from experiments.errors import ConfigError, RunFailure, first_line
from experiments.record.client import RecorderGone
from experiments.runner import live_settings, store_of
from experiments.sweeps import callback
from experiments.sweeps.outcomes import Outcome
from experiments.tasks import registry

log = logging.getLogger(__name__)


@dataclass
class Skipped:
    """A job whose config already FINISHED: the run it finished as, and its objective."""

    index: int
    overrides: list[str]
    run_id: str
    objective: Optional[float]


@dataclass
class _Job:
    index: int
    overrides: list[str]
    output_dir: Path
    identity: str
    experiment: str
    objective_key: Optional[str]
    store: record.Store
    settings: record.Settings  # its tracking.*: how long the store's answer is waited for


def already_finished(
    loader: Any, master: DictConfig, job_overrides: Sequence[Sequence[str]], first_index: int
) -> dict[int, Skipped]:
    """The jobs of a batch that ``skip_existing`` would skip, by job number; each gets its
    SKIPPED outcome in its directory. None are found outside a sweep this process opened.

    Args:
        loader: Hydra's config loader (the launcher's ``hydra_context.config_loader``).
        master: the sweep's config, as the launcher holds it.
        job_overrides: the batch's jobs, numbered from ``first_index``.
    """
    if not callback.active() or not _asks_to_skip(master, job_overrides):
        return {}  # nothing composed: a sweep that does not skip pays nothing here
    jobs = [
        job
        for index, overrides in enumerate(job_overrides, start=first_index)
        if (job := _planned(loader, master, index, list(overrides))) is not None
    ]
    found: dict[int, Skipped] = {}
    for (_, experiment, key), group in _by_store(jobs).items():
        answers = _ask(group, experiment, key)
        for job in group:
            answer = answers.get(job.identity)
            if answer is None:
                continue
            found[job.index] = Skipped(
                job.index, job.overrides, answer["run_id"], answer.get("objective")
            )
            _mark_skipped(job, found[job.index])
    return found


def finished_runs(
    client: Any, experiment: str, hashes: list[str], key: Optional[str]
) -> dict[str, Any]:
    """In the recording process: the newest FINISHED run of each config hash (those found).

    Returns:
        ``{"found": {hash: {"run_id": ..., "objective": ...}}}``.
    """
    from experiments.record.store.tracker import finished_run

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {"found": {}}
    answers = {
        identity: finished_run(client, found.experiment_id, identity, key)
        for identity in dict.fromkeys(hashes)
    }
    return {"found": {identity: run for identity, run in answers.items() if run is not None}}


def _asks_to_skip(master: DictConfig, job_overrides: Sequence[Sequence[str]]) -> bool:
    """Whether any job may ask for ``skip_existing``: set for the sweep (its command line or
    a preset), or by a job's own overrides."""
    if master.get("skip_existing"):
        return True
    return any(
        item.split("=", 1)[0].lstrip("+~") == "skip_existing"
        for overrides in job_overrides
        for item in overrides
    )


def _planned(loader: Any, master: DictConfig, index: int, overrides: list[str]) -> Optional[_Job]:
    """Job ``index`` as it will see itself: its config, identity, store and directory; None
    when it does not ask to skip, or when that is for the job itself to find out."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        job_config = loader.load_sweep_config(master, overrides)
        with open_dict(job_config.hydra.job):
            job_config.hydra.job.num = index
        hydra_config.set_config(job_config)  # ${hydra:...} resolves as in the job
        output_dir = Path(str(master.hydra.sweep.dir), str(job_config.hydra.sweep.subdir))
        task_config = copy.deepcopy(job_config)
        with read_write(task_config), open_dict(task_config):
            del task_config["hydra"]
        task = tasks.load(config.task_name_of(task_config))
        settings = config.validate(task_config, registry.settings_of(task))
        if not settings.skip_existing:
            return None
        store = store_of(settings.tracking)
        if store is None:
            return None
        return _Job(
            index,
            overrides,
            output_dir,
            config_hash(task_config),
            settings.tracking.experiment or task.name,
            task.objective_key,
            store,
            live_settings(settings.tracking),
        )
    except Exception as error:  # noqa: BLE001  (the job reports its own config's errors)
        log.debug("job %d left to check itself: %s", index, first_line(error))
        return None
    finally:
        if before is not None:
            hydra_config.set_config(before)


def _by_store(jobs: list[_Job]) -> dict[tuple, list[_Job]]:
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault((job.store.uri, job.experiment, job.objective_key), []).append(job)
    return groups


def _ask(group: list[_Job], experiment: str, key: Optional[str]) -> dict[str, Any]:
    """The store's FINISHED runs for these jobs' identities; none when it cannot say."""
    try:
        reply = record.call(
            group[0].store,
            f"{__name__}:finished_runs",
            group[0].settings,
            experiment=experiment,
            hashes=[job.identity for job in group],
            key=key,
        )
    except (RecorderGone, RunFailure, ConfigError) as failure:
        log.warning(
            "could not ask the store which jobs already finished (%s): each job checks itself",
            first_line(failure),
        )
        return {}
    return reply.get("found", {})


def _mark_skipped(job: _Job, skipped: Skipped) -> None:
    """The job's outcome, as the job itself would have left it, and its log line."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    Outcome(job.index, job.overrides, "SKIPPED", skipped.run_id, skipped.objective).write(
        job.output_dir
    )
    log.info(
        "job %d skipped: this config already FINISHED as run %s (not submitted)",
        job.index,
        skipped.run_id,
    )
