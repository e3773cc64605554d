"""A search's study: where it is stored, and which of its trials count.

The study is stored beside the runs unless ``hydra.sweeper.storage``, or the environment's
``EXPERIMENTS_STUDY_STORAGE`` (a team's database, set on every machine beside
``MLFLOW_TRACKING_URI``), says where:

- with a SQLite tracking store (the default ``mlflow.db``), in ``optuna.db`` next to it: a
  database of its own (Optuna's tables and MLflow's both keep an ``alembic_version``);
- the same, with jobs on a cluster's nodes (a Slurm launcher), in Optuna's journal file
  ``optuna.journal`` next to it: the nodes reach it over a shared filesystem, where SQLite's
  locking is not reliable and Optuna's journal file is made to work;
- with a tracking server, in ``optuna.journal`` in the working directory;
- ``storage: memory`` keeps the study in this process only.

A trial counts towards ``n_trials`` once it is COMPLETE, PRUNED or FAIL (its job ran and
failed), or while it RUNs for a process that is alive. A trial left RUNNING by a search that
was stopped or killed is told what its job's outcome says (:func:`settle`): a job that ran
to its end (its run FINISHED, its objective in its ``outcome.json``) makes it COMPLETE, as
its search would have; a job that did not is failed, marked ``experiments.abandoned``, and
its parameters are queued to be tried again. One asked for beyond ``n_trials`` by a search
running beside this one is failed at once, marked ``experiments.surplus``. Neither counts.
So the study holds a COMPLETE trial for each trial run that ended FINISHED, and no other.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

from experiments import locks
from experiments.errors import ConfigError
from experiments.record import liveness, uris
from experiments.sweeps.outcomes import Outcome, read_outcomes

log = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"  # beside a SQLite tracking store
JOURNAL_FILE = "optuna.journal"  # with a tracking server, in the working directory; or
# beside a SQLite tracking store that a cluster's nodes share
STORAGE_VARIABLE = "EXPERIMENTS_STUDY_STORAGE"  # a team's default, set on every machine
OWNER = "experiments.owner"  # host, place, pid and start time of the search asking a trial
BEAT = "experiments.heartbeat"  # when that search last said it is alive (seconds, epoch)
ABANDONED = "experiments.abandoned"
SURPLUS = "experiments.surplus"
RETRY_OF = "experiments.retry_of"  # a trial queued again: the number of the one it retries
RESUME = "experiments.resume"  # and [its run, its checkpoint]: the retry continues that run
JOB = "experiments.job"  # [sweep directory, job number]: where the trial's outcome is written
BEAT_EVERY_S = 30.0
SAMPLERS = ("tpe", "random", "grid", "qmc")
PRUNERS = ("none", "median", "hyperband")


def storage_key(setting: Optional[str]) -> str:
    """Where the study's storage was named: the setting, or the environment."""
    if not setting and os.environ.get(STORAGE_VARIABLE):
        return STORAGE_VARIABLE
    return "hydra.sweeper.storage"


def storage_url(setting: Optional[str], tracking_uri: str, on_nodes: bool = False) -> Optional[str]:
    """Where the study is kept (None: memory): the setting, ``EXPERIMENTS_STUDY_STORAGE``,
    or beside the tracking store; ``on_nodes``: the trials run on a cluster's nodes."""
    setting = setting or os.environ.get(STORAGE_VARIABLE) or None
    if setting:
        return None if setting == "memory" else setting
    database = uris.sqlite_path(tracking_uri)
    if database is not None and on_nodes:
        return f"journal:{database.parent / JOURNAL_FILE}"
    if database is not None:
        return f"sqlite:///{database.parent / STUDY_FILE}"
    return f"journal:{Path(JOURNAL_FILE).resolve()}"


def open_storage(url: Optional[str], key: str = "hydra.sweeper.storage") -> Any:
    """Optuna's storage for ``url``; a URL that cannot be opened is a ConfigError naming
    ``key``, where the URL came from."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        return optuna.storages.InMemoryStorage()
    shown = uris.scrub(url)
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        url = _with_driver(url)
        database = uris.sqlite_path(url)
        if database is None:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        if not database.parent.is_dir():
            raise ConfigError(f"{key}={shown}: no directory {database.parent}")
        # The first search to open a new file creates Optuna's tables; two at once would
        # both try (a second terminal, a job array): one at a time, by a lock beside it.
        with locks.beside(database):
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except ConfigError:
        raise
    except Exception as error:  # a bad URL, a driver missing, a server that refuses
        reason = uris.scrub(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise ConfigError(f"{key}={shown}: cannot open it: {reason}") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver installed: SQLAlchemy 2.1 means psycopg 3 by it,
    the ``server`` extra installs psycopg2 (as MLflow's server uses)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # two searches on one file wait their turn
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def load(storage: Any, name: str, direction: str, sampler: Any, pruner: Any = None) -> Any:
    """The study ``name`` (created when new); one stored with another direction is refused."""
    import optuna
    from optuna.study import StudyDirection

    try:
        stored = optuna.study.StudyDirection[direction.upper()]
    except KeyError:
        raise ConfigError(
            f"hydra.sweeper.direction={direction}: not minimize or maximize"
        ) from None
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    except Exception as error:
        raise ConfigError(f"hydra.sweeper.storage: cannot read its studies: {error}") from None
    found = existing.get(name)
    if found is not None and found.direction != stored:
        other = StudyDirection(found.direction).name.lower()
        raise ConfigError(
            f"hydra.sweeper.study_name={name}: the study exists to {other}, this search is "
            f"to {direction}; name another with hydra.sweeper.study_name"
        )
    return optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=name,
        direction=direction,
        load_if_exists=True,
    )


def reopen(url: str, name: str, pruner: str, every: int, after: int) -> Any:
    """A search's study as one of its jobs in another process sees it: to report and prune."""
    import optuna

    return optuna.load_study(
        study_name=name, storage=open_storage(url), pruner=make_pruner(pruner, every, after)
    )


def make_sampler(name: str, seed: Optional[int], grid: Optional[dict] = None) -> Any:
    """The sampler ``hydra.sweeper.sampler.name`` names, seeded."""
    from optuna import samplers

    if name == "tpe":
        return samplers.TPESampler(seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "qmc":
        import warnings

        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # the user chose it
            return samplers.QMCSampler(seed=seed)
    if name == "grid":
        return samplers.GridSampler(grid or {}, seed=seed)
    raise ConfigError(
        f"hydra.sweeper.sampler.name={name}: not a sampler here ({', '.join(SAMPLERS)})"
    )


def make_pruner(name: str, every: int, after: int = 0) -> Any:
    """The pruner ``hydra.sweeper.pruner`` names; a trial reports every ``every`` steps and
    is never stopped before step ``after``.

    ``median``: a trial stops at a step where its objective is worse than the median of the
    earlier trials' there, once 5 trials have completed (Optuna's default). ``hyperband``:
    trials race in brackets whose first rung is step ``after`` (at least ``every``), a third
    of them going on at each rung.
    """
    from optuna import pruners

    if name == "none":
        return pruners.NopPruner()
    if name == "median":
        return pruners.MedianPruner(n_warmup_steps=after)
    if name == "hyperband":
        return pruners.HyperbandPruner(min_resource=max(1, every, after), reduction_factor=3)
    raise ConfigError(f"hydra.sweeper.pruner={name}: not a pruner here ({', '.join(PRUNERS)})")


def owner() -> str:
    """This process, as a trial's owner: ``host place pid start``."""
    started = liveness.process_started(os.getpid())
    return f"{liveness.host()} {liveness.place()} {os.getpid()} {started}"


def _owner_alive(trial: Any, now: float, grace_s: float) -> bool:
    """Whether the search that asked ``trial`` may still be running it."""
    text = trial.user_attrs.get(OWNER, "")
    parts = text.split()
    if len(parts) == 4:
        host, place, pid, started = parts
        here = liveness.same_place(host, None if place == "None" else place)
        if here:
            started_at = None if started == "None" else float(started)
            return liveness.process_alive(int(pid), started_at)
    beat = trial.user_attrs.get(BEAT)
    moment = float(beat) if isinstance(beat, (int, float)) else trial.datetime_start.timestamp()
    return now - moment < grace_s


def counted(study: Any, grace_s: float) -> tuple[int, int]:
    """How many trials count towards ``n_trials``, and of them how many are still running.

    Trials left running by a search that is gone are settled here (:func:`_retry`).
    """
    from optuna.trial import TrialState

    held = running = 0
    now = time.time()
    for trial in study.get_trials(deepcopy=False):
        if counts(trial, now, grace_s):
            held += 1
            running += trial.state == TrialState.RUNNING
        elif trial.state == TrialState.RUNNING:
            _retry(study, trial)
            held += counts(study._storage.get_trial(trial._trial_id), now, grace_s)
    return held, running


def counts(trial: Any, now: float, grace_s: float) -> bool:
    """Whether ``trial`` counts towards ``n_trials`` (see the module's docstring)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        return not (trial.user_attrs.get(ABANDONED) or trial.user_attrs.get(SURPLUS))
    if trial.state == TrialState.RUNNING:
        return _owner_alive(trial, now, grace_s)
    return False


def _retry(study: Any, trial: Any) -> None:
    """Settle a trial whose search is gone: by its job's outcome where that can be read
    (the search stopped after the job ended), else failed and queued to be tried again."""
    where = trial.user_attrs.get(JOB)
    outcome = None
    if isinstance(where, list) and len(where) == 2:
        outcome = job_outcome(Path(str(where[0])), int(where[1]))
    if outcome is not None and outcome.status == "RUNNING" and not outcome.gone():
        outcome = None  # its job still runs somewhere this host cannot see: not known yet
    if settle(study, trial, outcome, claim=True):
        log.info("trial %d was left running by a search that is gone: tried again", trial.number)


def job_outcome(sweep_dir: Path, job: int) -> Optional[Outcome]:
    """Job ``job``'s outcome in ``sweep_dir``, or None where it has none (or is not here)."""
    try:
        return next((found for found in read_outcomes(sweep_dir) if found.job == job), None)
    except OSError:
        return None


def settle(study: Any, trial: Any, outcome: Optional[Outcome], claim: bool = False) -> bool:
    """Tell ``trial`` what its job's ``outcome`` says, its search having stopped before it
    could; returns True when the trial is to be tried again.

    FINISHED (or UNSYNCED: finished, kept in its journal) with a finite objective: COMPLETE
    with it; PRUNED: pruned; FAILED: failed, counted (the job's own failure, as its search
    tells one). Anything else (KILLED, RUNNING, no outcome): failed, marked
    ``experiments.abandoned``, and its parameters queued again.

    Args:
        claim: another search may settle it at the same moment (a trial left by a search
            that is gone): only the one whose tell goes through queues it again.
    """
    from optuna.trial import TrialState

    status = outcome.status if outcome is not None else None
    value = outcome.objective if outcome is not None else None
    if status in ("FINISHED", "UNSYNCED", "SKIPPED") and _finite(value):
        told = (TrialState.COMPLETE, float(value))  # type: ignore[arg-type]
    elif status == "PRUNED":
        told = (TrialState.PRUNED, None)
    elif status == "FAILED":
        told = (TrialState.FAIL, None)
    else:
        told = None
    try:
        if told is not None:
            state, number = told
            study.tell(trial.number, number, state=state, skip_if_finished=not claim)
            return False
        study._storage.set_trial_user_attr(trial._trial_id, ABANDONED, True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=not claim)
    except Exception:  # another search took it first
        return False
    queue_again(study, trial, resumable(outcome))
    return True


def resumable(outcome: Optional[Outcome]) -> Optional[list[str]]:
    """``[run id, checkpoint]`` of a job that stopped before its end with a checkpoint saved
    (a signal: its task saved one at its last step), to continue rather than start over."""
    if outcome is None or outcome.directory is None:
        return None
    from experiments import checkpoints
    from experiments.record import journal

    directory = Path(outcome.directory)
    found = checkpoints.latest_path(directory / "checkpoints")
    if found is None:
        return None
    for path in sorted(journal.find([directory]), reverse=True):
        run = next((r for r in journal.records(path) if r.get("type") == "run"), None)
        if run is not None:
            return [str(run["run_id"]), str(found)]
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def queue_again(study: Any, trial: Any, resume: Optional[list[str]] = None) -> None:
    """Queue ``trial``'s parameters: the next trial asked for gets them (and, ``resume``,
    continues the trial's run from its checkpoint)."""
    attrs: dict[str, Any] = {RETRY_OF: trial.number}
    if resume is not None:
        attrs[RESUME] = resume
    try:
        study.enqueue_trial(trial.params, user_attrs=attrs)
    except Exception as error:  # the storage is gone: the trial stays failed, not retried
        log.warning("trial %d could not be queued again: %s", trial.number, error)


def fail(study: Any, trial: Any, mark: Optional[str] = None) -> None:
    """Tell ``trial`` failed (marked ``mark``: it does not count), if nothing told it yet."""
    from optuna.trial import TrialState

    try:
        if mark is not None:
            trial.set_user_attr(mark, True)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except Exception as error:
        log.warning("trial %d could not be told failed: %s", trial.number, error)


class Heartbeat:
    """While a batch runs, say every 30 s that this search still runs its trials."""

    def __init__(self, trials: list[Any]) -> None:
        self.trials = trials
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_EVERY_S):
            for trial in self.trials:
                try:
                    trial.set_user_attr(BEAT, time.time())
                except Exception:  # finished meanwhile, or the storage is busy: next time
                    pass
