"""The names a reviewer, the report and other runs read: results' metrics, shared tags.

A task's objective (its ``Task.objective``: what ``run()`` returns, what sweeps optimise) is
the metric ``objective/<name>`` (``objective/loss``); its other results are
``result/<name>`` (``result/grad_norm``). MLflow's UI sorts its chart sections by the
prefix, so a run's page opens on the objective's chart, then the other results, ahead of
the timings (``time/``), derivative's errors against sympy (``sympy/``) and variables
(``var/``).

Runs recorded before carry older names: the objective as ``result/<name>``, and before
results had a prefix every result bare (``loss``); the errors against sympy as
``check/...``. Readers of stored runs (the report, ``skip_existing``, a rerun's verdict)
find a result under any of its names, by its bare name (:func:`bare_name`,
:func:`results`) or through :func:`legacy_names`. The tags below
are set by one part and read by another (the record path, the runner, sweeps, the report).
"""

from __future__ import annotations

from typing import Mapping, Sequence

OBJECTIVE = "objective/"  # a task's objective: its own section, sorted before the others
RESULT = "result/"  # a task's other results
SYMPY = "sympy/"  # derivative's errors against sympy (``check/`` before: it sorted first)
_CHECK = "check/"
NOISY_TAG = "noisy"  # a matmul run's tag when its timings spread widely, saying why
ERROR_TAG = "error"  # why a run ended FAILED or KILLED
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a sweep's job names its parent run
JOURNAL_ID_TAG = "journal.id"  # the journal a run was recorded from (how sync finds it)
CONFIG_HASH_TAG = "config.hash"  # a run's resolved config, hashed (skip_existing, reruns)
SWEEP_TAG = "sweep"  # "true" on a sweep's parent run
NOTE_TAG = "mlflow.note.content"  # MLflow's own: a run's description (how to rerun it)
RERUN_OF_TAG = "rerun_of"  # a rerun names the run it ran again
REPRODUCED_TAG = "reproduced"  # a rerun's verdict: true, false, or why it cannot say
PRUNED_TAG = "pruned"  # a search stopped this trial early: the step it stopped at
STUDY_TAG = "search.study"  # a search's parent run: its Optuna study (a rerun searches anew)
OBJECTIVE_TAG = "objective"  # a run's objective metric (objective/loss), as its task said
DIRECTION_TAG = "direction"  # minimize or maximize: which objective its task calls best
VERDICT_TAG = "verdict"  # how a rerun of it is judged: exact, tolerance ..., timing ...
CHECKPOINT_TAG = "checkpoint.dir"  # where a run's checkpoints are (a resume finds them there)
ATTEMPT_TAG = "attempt"  # a run continued from its checkpoint: which attempt records it now
RESUMED_TAG = "resumed"  # how many times it was continued
ATTEMPT_JOURNAL_TAG = "attempt.journal"  # the journal of the attempt that records it now
RESUMED_FROM_TAG = "resumed_from"  # the step its latest attempt continued from
RESUMED_FROM_RUN_TAG = "resumed_from_run"  # a new run started from another run's checkpoint
# The files of a run's record that a rerun reads back (experiments.reproduce).
OVERRIDES_FILE = "overrides.yaml"  # the command line's overrides that made the run
LAUNCH_FILE = "hydra_overrides.yaml"  # a sweep's launcher and sweeper overrides
ENVIRONMENT_FILE = "environment.json"  # where the run ran (runner.environment)
CODE_DIFF_FILE = "code.diff"  # a dirty checkout's changes
TASK_CODE_DIFF_FILE = "task.code.diff"  # the same of a task's own checkout (an outside task)


def without_tags(overrides: Sequence[str]) -> list[str]:
    """The overrides that are settings: ``tracking.tags.*`` are labels, never part of a name."""
    return [item for item in overrides if not item.lstrip("+~").startswith("tracking.tags.")]


def objective(name: str) -> str:
    """The metric name of a task's objective ``name``: ``objective("loss") == "objective/loss"``."""
    return OBJECTIVE + name


def result(name: str) -> str:
    """The metric name of another result ``name``: ``result("gflops") == "result/gflops"``."""
    return RESULT + name


def bare_name(key: str) -> str | None:
    """The bare name of a result's metric (``objective/loss`` and ``result/loss``: ``loss``),
    or None for any other metric."""
    for prefix in (OBJECTIVE, RESULT):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def legacy_names(key: str) -> tuple[str, ...]:
    """The names the metric ``key`` had in runs recorded before, newest first.

    ``objective/loss`` was ``result/loss``, and before that ``loss``; ``result/grad_norm``
    was ``grad_norm``; ``sympy/max_rel_err`` was ``check/max_rel_err``; any other metric
    kept its name (none).
    """
    if key.startswith(SYMPY):
        return (_CHECK + key[len(SYMPY) :],)
    bare = bare_name(key)
    if bare is None:
        return ()
    return (result(bare), bare) if key.startswith(OBJECTIVE) else (bare,)


def recorded_name(metrics: Mapping[str, float], key: str) -> str | None:
    """The name a run recorded the metric ``key`` under (its name now or a legacy one),
    or None when the run's ``metrics`` have neither."""
    return next((name for name in (key, *legacy_names(key)) if name in metrics), None)


def recorded(metrics: Mapping[str, float], key: str) -> float | None:
    """The value of the metric ``key`` in a run's ``metrics``, under whichever name the run
    recorded it, or None when it has none."""
    name = recorded_name(metrics, key)
    return None if name is None else metrics[name]


def results(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's results by bare name (``{"loss": ...}``), whichever way it recorded them."""
    found = {bare: value for key, value in metrics.items() if (bare := bare_name(key))}
    if found:
        return found
    return {key: value for key, value in metrics.items() if "/" not in key}  # before the prefix
