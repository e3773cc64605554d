"""One job of the command: a single run, or one job of a sweep, from its composed config.

Hydra calls :func:`run_job` once per job. A single run reports an expected error as the
command's one line (:class:`JobErrors`); a job of a sweep writes its outcome where the sweep
collects it (``experiments.sweeps``), and its error goes on to the sweeper.
"""

from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments import runner, signals
from experiments.command.exits import JobErrors
from experiments.command.messages import one_line
from experiments.errors import ConfigError, NotRecorded, Pruned, RunFailure
from experiments.record import uris
from experiments.runner import Result, not_recorded_line
from experiments.sweeps import callback, outcomes
from experiments.sweeps.parent import parent_of
from experiments.sweeps.search import trial as search_trial

log = logging.getLogger("experiments")


def run_job(cfg: DictConfig) -> float | None:
    """Run one job of a run or a sweep; return its objective for sweepers."""
    hydra_cfg = HydraConfig.get()
    # What the command line said, a password in a URI removed: it names runs and rows.
    overrides = [uris.scrub(item) for item in hydra_cfg.overrides.task]
    output_dir = hydra_cfg.runtime.output_dir
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return _single_run(cfg, overrides, output_dir)
    return _sweep_job(cfg, hydra_cfg.job.num, overrides, output_dir, hydra_cfg.sweep.dir)


def _single_run(cfg: DictConfig, overrides: list[str], output_dir: str) -> float | None:
    try:
        result = runner.execute(cfg, overrides, output_dir)
    except (ConfigError, RunFailure) as error:
        JobErrors.errors.append(error)  # reported by exits.invoke, as one line
        return None
    _say_where_kept(result)
    delivery = result.delivery
    if delivery is not None and not delivery.offline and not delivery.recorded:
        JobErrors.errors.append(NotRecorded(not_recorded_line(delivery)))
    signals.raise_deferred()  # a signal while the FINISHED run closed: the command stops
    return result.objective


def _sweep_job(
    cfg: DictConfig, job: int, overrides: list[str], output_dir: str, sweep_dir: str
) -> float | None:
    outcome = outcomes.started(job, overrides, output_dir)
    try:
        parent = parent_of(sweep_dir)
        result = runner.execute(
            cfg,
            overrides,
            output_dir,
            parent_run_id=parent.run_id,
            parent_journal=parent.journal_id,
            run_name=parent.child_name(overrides),
            judge=search_trial.judge_for(cfg.tracking.tags),
            # In the launching process, the next job runs while this one's last records
            # are sent; the sweep collects how they fared before its summary.
            defer_delivery=callback.active(),
        )
    except BaseException as error:
        # A signal ends the job KILLED, also where a handler it reached raised an error of
        # its own (submitit's, on SIGUSR2 near the time limit), as the run itself does.
        stopped = signals.stop_reason(error)
        pruned = isinstance(error, Pruned)
        outcome.status = "KILLED" if stopped is not None else "PRUNED" if pruned else "FAILED"
        outcome.reason = stopped or one_line(error)
        outcome.write(output_dir)
        if pruned:
            log.info("job %s %s", job, outcome.reason)
        elif stopped is None:
            # Hydra re-raises only the sweep's first error: name every failed job here.
            log.error("job %s failed: %s", job, outcome.reason)
        raise
    _say_where_kept(result)
    delivery = result.delivery
    if delivery is not None and not delivery.offline and not delivery.recorded:
        outcome.reason = not_recorded_line(delivery)
        log.warning("job %s: %s", job, outcome.reason)
    outcome.status = outcomes.status_of(result)
    outcome.run_id, outcome.objective = result.run_id, result.objective
    outcome.write(output_dir)
    if result.pending is not None:
        callback.pending(outcome, output_dir, result.pending)
    # A signal that came while the run was closing stops the sweep, now that this job's
    # outcome says it FINISHED (a search tells its trial so).
    signals.raise_deferred()
    return result.objective


def _say_where_kept(result: Result) -> None:
    """A run kept offline on purpose says where, and how to upload it."""
    delivery = result.delivery
    if delivery is not None and delivery.offline:
        log.info(
            "recorded offline in %s; upload with: python -m experiments.sync %s",
            delivery.journal.parent,
            delivery.journal.parent,
        )
