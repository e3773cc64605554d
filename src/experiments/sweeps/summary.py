"""The sweep's summary: a table of every job, its counts by status, the best job, and
where to review it in MLflow's UI."""

from __future__ import annotations

import math
from typing import Optional

from experiments.names import without_tags
from experiments.record import uris
from experiments.sweeps.outcomes import Outcome, counts_line

BEST_RUN_TAG = "best_run"  # the parent's tag: the run that reached the best objective


def best_metric(objective: str) -> str:
    """The parent's metric holding the best objective: ``best/loss`` for ``objective/loss``."""
    return "best/" + objective.rsplit("/", 1)[-1]


def best_outcome(outcomes: list[Outcome], direction: str = "minimize") -> Optional[Outcome]:
    """The job with the best finite objective in the task's ``direction`` (the lowest, or
    the highest where the task maximizes it), done or reused."""
    done = [
        outcome
        for outcome in outcomes
        if outcome.status in ("FINISHED", "SKIPPED")
        and outcome.run_id is not None
        and outcome.objective is not None
        and math.isfinite(outcome.objective)
    ]
    if not done:
        return None
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda outcome: outcome.objective)


def review_line(
    store_uri: Optional[str], run_id: Optional[str], experiment_id: Optional[str]
) -> Optional[str]:
    """Where to look at the sweep: the parent run's page in the MLflow UI (None: offline)."""
    if store_uri is None or run_id is None or experiment_id is None:
        return None
    uri = uris.redact(store_uri)
    # MLflow 3's UI opens in its GenAI mode unless told otherwise; runs are "machine_learning"
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"Review it at {uri.rstrip('/')}/{page}"
    return f"Review it with: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"


def summary_table(outcomes: list[Outcome], objective: Optional[str] = None) -> str:
    """An aligned text table: job, overrides, status, objective, and the reason of failures.

    Args:
        objective: the metric the objective column holds (e.g. ``loss``), for its heading.
    """
    rows = [("job", "overrides", "status", objective or "objective", "reason / run")]
    for outcome in outcomes:
        value = "" if outcome.objective is None else number(outcome.objective)
        note = outcome.reason or (outcome.run_id or "")
        shown = " ".join(without_tags(outcome.overrides))
        rows.append((str(outcome.job), shown, outcome.status, value, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def sweep_summary(
    name: str,
    objective: Optional[str],
    outcomes: list[Outcome],
    best: Optional[Outcome],
    searched: Optional[str] = None,
) -> str:
    """The summary printed at the end of a sweep: counts, the table of jobs, a search's
    study (its line, ``searched``), and the best objective."""
    table = summary_table(outcomes, objective) if outcomes else "(no job to run)"
    summary = f"Sweep {name!r}: {counts_line(outcomes)}\n{table}"
    if searched is not None:
        summary += f"\n{searched}"
    if best is not None and best.objective is not None:
        summary += (
            f"\nbest {objective}: {number(best.objective)} (job {best.job}: "
            f"{' '.join(without_tags(best.overrides))}), run {best.run_id}"
        )
    return summary
