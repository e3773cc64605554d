"""The names a reviewer, the report and other runs read: results' metrics, shared tags.

A task's results are metrics named ``result/<name>``, first in MLflow's UI. Runs recorded
before results had their prefix carry the bare name (``loss``); readers of stored runs (the
report, ``skip_existing``) fall back to it through :func:`legacy_name`. The tags below are
set by one part and read by another (the record path, the runner, sweeps, the report).
"""

from __future__ import annotations

from typing import Mapping, Sequence

RESULT = "result/"
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
# The files of a run's record that a rerun reads back (experiments.reproduce).
OVERRIDES_FILE = "overrides.yaml"  # the command line's overrides that made the run
LAUNCH_FILE = "hydra_overrides.yaml"  # a sweep's launcher and sweeper overrides
ENVIRONMENT_FILE = "environment.json"  # where the run ran (runner.environment)
CODE_DIFF_FILE = "code.diff"  # a dirty checkout's changes


def without_tags(overrides: Sequence[str]) -> list[str]:
    """The overrides that are settings: ``tracking.tags.*`` are labels, never part of a name."""
    return [item for item in overrides if not item.lstrip("+~").startswith("tracking.tags.")]


def result(name: str) -> str:
    """The metric name of a task's result ``name``: ``result("loss") == "result/loss"``."""
    return RESULT + name


def legacy_name(key: str) -> str | None:
    """The bare name a result had in runs recorded before the prefix, or None."""
    return key[len(RESULT) :] if key.startswith(RESULT) else None


def results(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's results by bare name (``{"loss": ...}``), whichever way it recorded them."""
    found = {bare: value for key, value in metrics.items() if (bare := legacy_name(key))}
    if found:
        return found
    return {key: value for key, value in metrics.items() if "/" not in key}  # before the prefix
