"""The search: batches of ``n_jobs`` trials through the sweep's launcher, until the study
holds ``n_trials``.

Each batch asks the study for its trials, runs them as the sweep's jobs (any launcher:
in this process, joblib, submitit, Slurm), and tells each its job's objective, or that it
failed. A rerun of the same command loads the same study and runs only the trials missing;
several searches on one study share its ``n_trials``. A signal stops the search: a trial
whose job had ended is told how (its job's outcome), the others in flight are failed and
queued to be tried again by the next search. At the end the best trial goes to
``optimization_results.yaml`` in the sweep directory.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf

from experiments import signals
from experiments.errors import ConfigError, Pruned
from experiments.names import without_tags
from experiments.record import uris
from experiments.sweeps import launching
from experiments.sweeps.search import note
from experiments.sweeps.search import space as spaces
from experiments.sweeps.search import study as studies
from experiments.sweeps.search import trial as trials_of

log = logging.getLogger("experiments.search")

RESULTS_FILE = "optimization_results.yaml"
FIGURES_DIR = "search"  # Optuna's figures of the study, in the sweep directory
TRIAL_TAG = "trial"  # each trial's run: its number in the study


@dataclass
class _Plan:
    """What ``hydra.sweeper.*`` asks for, checked: the trials, the space, sampler, pruner."""

    n_trials: int
    n_jobs: int
    rate: float  # max_failure_rate
    space: Any
    sampler_name: str
    seed: Any
    grid: Any
    sampler: Any
    pruner_name: str
    every: int  # prune_every
    after: int  # prune_after
    pruner: Any


def search(
    config: DictConfig, launcher: Any, settings: Mapping[str, Any], arguments: Sequence[str]
) -> None:
    """Run the search ``settings`` (``hydra.sweeper.*``) describes."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("hydra/sweeper=optuna needs Optuna: pip install -e '.[sweeps]'") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module says what matters
    plan = _plan(settings, arguments)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    study, name, url = _open_study(config, settings, plan, sweep_dir)
    grace_s = float(config.tracking.lost_after_s)
    held, running = studies.counted(study, grace_s)
    shown = uris.scrub(url) if url else "memory"
    note.write(sweep_dir, name, shown, held, plan.n_trials)
    _say_where(plan, name, shown, held, running)
    _run_trials(study, plan, launcher, name, url, held, grace_s, sweep_dir.resolve())
    best = _write_results(study, sweep_dir, name, shown)
    if best is not None:
        figures = _draw(study, sweep_dir)
        note.write(sweep_dir, name, shown, held, plan.n_trials, best=best, figures=figures)


def _plan(settings: Mapping[str, Any], arguments: Sequence[str]) -> _Plan:
    """The search's settings, each checked (a bad one is a ConfigError naming it)."""
    n_trials, n_jobs = int(settings["n_trials"]), int(settings["n_jobs"])
    rate = float(settings["max_failure_rate"])
    if n_trials < 1 or n_jobs < 1:
        raise ConfigError(
            f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be at least 1"
        )
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={rate}: not between 0 and 1")
    space = spaces.parse(settings.get("params"), arguments)
    sampler_settings = settings.get("sampler") or {}
    sampler_name = str(sampler_settings.get("name", "tpe"))
    grid = space.grid() if sampler_name == "grid" else None
    if grid is not None:
        n_trials = min(n_trials, math.prod(len(values) for values in grid.values()))
    seed = sampler_settings.get("seed")
    sampler = studies.make_sampler(sampler_name, seed, grid)
    pruner_name = str(settings.get("pruner") or "none")
    every, after = int(settings.get("prune_every") or 1), int(settings.get("prune_after") or 0)
    if every < 1 or after < 0:
        raise ConfigError(
            f"hydra.sweeper.prune_every={every}, prune_after={after}: at least 1 and 0"
        )
    pruner = studies.make_pruner(pruner_name, every, after)
    return _Plan(
        n_trials,
        n_jobs,
        rate,
        space,
        sampler_name,
        seed,
        grid,
        sampler,
        pruner_name,
        every,
        after,
        pruner,
    )


def _open_study(
    config: DictConfig, settings: Mapping[str, Any], plan: _Plan, sweep_dir: Path
) -> tuple[Any, str, str | None]:
    """The study, where it is kept (its URL; None: memory) and its name."""
    tracking_uri = uris.absolute(uris.resolve(config.tracking.uri)[0])
    on_nodes = _launcher(config).endswith("SlurmLauncher")
    url = studies.storage_url(settings.get("storage"), tracking_uri, on_nodes)
    jobs_here = launching.runs_jobs_here(config.hydra.launcher)
    if url is None and plan.pruner_name != "none" and not jobs_here:
        # This process's memory is out of its jobs' reach: a study of this sweep's own, in
        # a journal file in its directory, is what they can report to.
        url = f"journal:{(sweep_dir / studies.JOURNAL_FILE).resolve()}"
        log.info("the jobs run in other processes: the study is kept in %s", url[8:])
    _warn_sqlite_on_a_cluster(config, url, plan.pruner_name)
    storage = studies.open_storage(url, studies.storage_key(settings.get("storage")))
    name = settings.get("study_name") or study_name(list(config.hydra.overrides.task))
    direction = _direction(config, settings.get("direction"))
    study = studies.load(storage, name, direction, plan.sampler, plan.pruner)
    asked = len(study.get_trials(deepcopy=False))
    if asked and plan.seed is not None and plan.sampler_name in ("tpe", "random"):
        # Seeded afresh, the sampler would propose the study's first trials again.
        study.sampler = studies.make_sampler(plan.sampler_name, int(plan.seed) + asked, plan.grid)
    return study, name, url


def _direction(config: DictConfig, setting: Any) -> str:
    """Which way the search optimises: the task's (its ``Task.direction``); a setting of
    ``hydra.sweeper.direction`` must agree with it."""
    from experiments.config import task_name_of
    from experiments.tasks import registry

    task = registry.load(task_name_of(config))
    if setting is not None and str(setting) != task.direction:
        raise ConfigError(
            f"hydra.sweeper.direction={setting}: task {task.name} {task.direction[:-1]}es "
            f"its objective {task.objective_key}; leave hydra.sweeper.direction unset"
        )
    return task.direction


def _say_where(plan: _Plan, name: str, shown: str, held: int, running: int) -> None:
    """The study, what it holds and what is left to run; how its pruner judges."""
    log.info(
        "study %r in %s: it holds %d trial%s%s; %d to run for n_trials=%d",
        name,
        shown,
        held,
        "" if held == 1 else "s",
        f" ({running} running elsewhere)" if running else "",
        max(0, plan.n_trials - held),
        plan.n_trials,
    )
    if plan.pruner_name != "none":
        log.info(
            "pruner %s: trials report their objective every %d steps, none is stopped before "
            "step %d",
            plan.pruner_name,
            plan.every,
            plan.after,
        )


def _run_trials(
    study: Any,
    plan: _Plan,
    launcher: Any,
    name: str,
    url: str | None,
    held: int,
    grace_s: float,
    sweep_dir: Path,
) -> None:
    """Batches of trials through the launcher until the study holds ``n_trials``."""
    job = 0
    with trials_of.offered(study, name, url, plan.pruner_name, plan.every, plan.after):
        while True:
            wanted = min(plan.n_jobs, plan.n_trials - held)
            trials = _ask(study, plan.space, wanted, plan.n_trials, grace_s)
            if not trials:
                held, _ = studies.counted(study, grace_s)
                if held >= plan.n_trials:
                    break
                time.sleep(1.0)  # another search holds the rest for now: look again
                continue
            job += _run_batch(study, plan, launcher, trials, job, sweep_dir)
            held, _ = studies.counted(study, grace_s)


def study_name(overrides: Sequence[str]) -> str:
    """A study's default name: the command line's settings, sorted (not where it records)."""
    settings = sorted(
        item
        for item in without_tags(overrides)
        if not item.lstrip("+~").startswith(
            ("tracking.", "skip_existing", "checkpoint.", "resume.")
        )
    )
    return " ".join(settings) or "search"


def _ask(study: Any, space: spaces.Space, count: int, n_trials: int, grace_s: float) -> list:
    """Up to ``count`` new trials, each within ``n_trials`` of the study (others ask too)."""
    if count <= 0:
        return []
    me = studies.owner()
    trials = []
    # A trial asked is owned at once: a signal in between would leave it RUNNING with no
    # owner, which the next search could not tell from one still running elsewhere.
    with signals.deferred():
        for _ in range(count):
            trial = study.ask(space.distributions)
            trial.set_user_attr(studies.OWNER, me)
            trial.set_user_attr(studies.BEAT, time.time())
            trials.append(trial)
    signals.raise_deferred()
    # A search beside this one may have asked at the same moment: the first n_trials that
    # count, by number, are the study's; a trial of this one beyond them is not run.
    now, mine = time.time(), {trial.number for trial in trials}
    counting = sorted(
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.number in mine or studies.counts(t, now, grace_s)
    )
    allowed = set(counting[:n_trials])
    kept = []
    for trial in trials:
        if trial.number in allowed:
            kept.append(trial)
        else:
            studies.fail(study, trial, studies.SURPLUS)
    return kept


def _run_batch(
    study: Any, plan: _Plan, launcher: Any, trials: list, job: int, sweep_dir: Path
) -> int:
    """Run ``trials`` as jobs ``job``, ``job + 1``...; tell each how it went.

    Each trial names its job's directory first (``experiments.job``), so that a later search
    can settle it by the job's outcome should this one be killed before it tells it.
    """
    overrides = [
        [
            *plan.space.overrides(trial.params),
            f"++tracking.tags.{TRIAL_TAG}={trial.number}",
            *_continues(trial),
        ]
        for trial in trials
    ]
    for number, trial in enumerate(trials, start=job):
        trial.set_user_attr(studies.JOB, [str(sweep_dir), number])
    try:
        with studies.Heartbeat(trials):
            returns = launcher.launch(overrides, initial_job_idx=job)
    except BaseException:
        # A signal, or a launcher that gave up: a trial whose job ended is told how, by its
        # outcome; the others are tried again by the next search.
        for number, trial in enumerate(trials, start=job):
            studies.settle(study, trial, studies.job_outcome(sweep_dir, number))
        raise
    with signals.deferred():  # every trial told, then a signal that came meanwhile
        failed = _tell_all(study, trials, returns)
    signals.raise_deferred()
    if failed and len(failed) / len(returns) > plan.rate:
        log.error(
            "%d of %d trials failed, more than hydra.sweeper.max_failure_rate=%s allows",
            len(failed),
            len(returns),
            plan.rate,
        )
        for result in failed:
            if result.status == JobStatus.FAILED:
                result.return_value  # raises the job's own error  # noqa: B018
        raise ConfigError("the search stopped: a trial's job returned no objective")
    return len(returns)


def _continues(trial: Any) -> list[str]:
    """A trial that retries one its search abandoned mid-run, with a checkpoint saved:
    the overrides that continue that trial's run (``resume.*``), from its checkpoint."""
    found = trial.user_attrs.get(studies.RESUME)
    if not (isinstance(found, list) and len(found) == 2):
        return []
    run_id, checkpoint = found
    # Under a command that changed since (another task.steps), the trial starts afresh.
    return [f"resume.run={run_id}", f"resume.checkpoint='{checkpoint}'", "resume.else_fresh=true"]


def _tell_all(study: Any, trials: list, returns: Sequence[Any]) -> list:
    """Tell each trial its job's result; return the results that failed."""
    failed = []
    for trial, result in zip(trials, returns):
        if _pruned(result):
            _tell(study, trial, None, pruned=True)
            continue
        value = _objective(result)
        if value is None:
            failed.append(result)
        _tell(study, trial, value)
    return failed


def _tell(study: Any, trial: Any, value: float | None, pruned: bool = False) -> None:
    """Tell the study a trial's objective, or (None) that it failed or was pruned."""
    from optuna.trial import TrialState

    try:
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except RuntimeError as error:
        # The grid sampler stops the study at its last point, which only an optimize loop
        # can take; the trial is told all the same.
        if "Study.stop" not in str(error):
            raise


def _pruned(result: Any) -> bool:
    """Whether the job stopped because the pruner judged its trial (``errors.Pruned``)."""
    return result.status == JobStatus.FAILED and isinstance(
        getattr(result, "_return_value", None), Pruned
    )


def _warn_sqlite_on_a_cluster(config: DictConfig, url: str | None, pruner: str) -> None:
    """Say that a SQLite study is no place for pruned trials on a cluster's nodes.

    With a pruner, every trial reports to the study from its own job; on Slurm those jobs
    reach the file over a shared filesystem, where SQLite's locking is not reliable.
    Optuna's journal file is made for that (its lock is a file created atomically).
    """
    if pruner == "none" or not _launcher(config).endswith("SlurmLauncher"):
        return
    if url is None or not url.startswith("sqlite:"):
        return
    log.warning(
        "the study %s is a SQLite file, which pruned trials on several nodes reach over a "
        "shared filesystem, where SQLite's locking is not reliable: use "
        "hydra.sweeper.storage=journal:PATH (Optuna's journal file, made for NFS) or a "
        "database server (docs/slurm.md)",
        uris.scrub(url),
    )


def _launcher(config: DictConfig) -> str:
    """The class of the sweep's launcher, as Hydra's config names it."""
    return str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


def _objective(result: Any) -> float | None:
    """A job's objective, or None when it failed or gave none (or not a finite number)."""
    if result.status != JobStatus.COMPLETED:
        return None
    try:
        value = float(result.return_value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _write_results(study: Any, sweep_dir: Path, name: str, storage: str) -> dict[str, Any] | None:
    """The best trial so far, in the sweep directory (Hydra's Optuna sweeper's file)."""
    try:
        best = study.best_trial
    except ValueError:
        log.warning("study %r holds no completed trial: no best value yet", name)
        return None
    results = {
        "name": "optuna",
        "study_name": name,
        "storage": storage,
        "best_trial": best.number,
        "best_params": dict(best.params),
        "best_value": best.value,
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
    log.info("best value %s of trial %d: %s", best.value, best.number, best.params)
    return {"trial": best.number, "value": best.value, "params": dict(best.params)}


def _draw(study: Any, sweep_dir: Path) -> list[str]:
    """Optuna's own figures of the study, drawn with matplotlib into ``<sweep dir>/search``:
    the objective over the trials, and against each parameter (with two or more: their
    importance and parallel coordinates). Returns their paths in the sweep directory."""
    import warnings

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only: Optuna draws with pyplot
    from matplotlib import pyplot
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    # A choice of numbers (choice(16, 32)) is plotted as categories: matplotlib says so at
    # INFO, which Hydra's logging would print as a line of the sweep's.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    charts = [
        ("optimization_history", plots.plot_optimization_history),
        ("slice", plots.plot_slice),
    ]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        charts.append(("intermediate_values", plots.plot_intermediate_values))
    if len(study.best_trial.params) >= 2:
        charts += [
            ("param_importances", plots.plot_param_importances),
            ("parallel_coordinate", plots.plot_parallel_coordinate),
        ]
    out = sweep_dir / FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, plot in charts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" warnings
                axes = plot(study)
        except Exception as error:  # a figure this study cannot have: the others still
            log.warning("the search's %s figure was not drawn: %s", name, error)
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = first.get_figure()
        figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        pyplot.close(figure)
        drawn.append(f"{FIGURES_DIR}/{name}.png")
    return drawn
