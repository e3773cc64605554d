"""derivative's own table in a sweep's report (``Task.report``): per run, the expression,
the point, every value, and the worst error against sympy. Made without torch."""

from __future__ import annotations

import re
from typing import Any, Sequence

from experiments.names import SYMPY, recorded, results
from experiments.reporting import aligned, number

DERIVATIVE_METRIC = re.compile(r"^(f|d(\d*)f_\w+)$")


def figures(runs: Sequence[Any]) -> dict[str, Any]:
    """``derivative.txt``, of every run (``api.ReportRun``), failed ones included."""
    return {"derivative.txt": derivative_table(runs)} if runs else {}


def derivative_table(runs: Sequence[Any]) -> str:
    """Per run: the expression, the point, every value, and the worst error against sympy."""
    rows = [("run", "status", "expr", "at", "values", "max abs err", "max rel err")]
    for run in runs:
        params, metrics = run.params, run.metrics
        values_of = results(metrics)
        at = " ".join(f"{k[8:]}={v}" for k, v in sorted(params.items()) if k.startswith("task.at."))
        values = sorted((m for m in values_of if DERIVATIVE_METRIC.match(m)), key=_order)
        rows.append(
            (
                run.name or run.run_id,
                run.status,
                params.get("task.expr", ""),
                at,
                " ".join(f"{m}={number(values_of[m])}" for m in values),
                number(recorded(metrics, SYMPY + "max_abs_err")),
                number(recorded(metrics, SYMPY + "max_rel_err")),
            )
        )
    return aligned(rows)


def _order(name: str) -> tuple[int, str]:
    match = DERIVATIVE_METRIC.match(name)
    order = 0 if name == "f" or match is None else int(match.group(2) or 1)
    return order, name
