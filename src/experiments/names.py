"""Metric names of a task's results: ``result/<name>``, first in MLflow's UI.

Runs recorded before results had their prefix carry the bare name (``loss``); readers of
stored runs (the report, ``skip_existing``) fall back to it through :func:`legacy_name`.
"""

from __future__ import annotations

from typing import Mapping

RESULT = "result/"
NOISY_TAG = "noisy"  # a matmul run's tag when its timings spread widely, saying why


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
