"""The report's text tables: every run, and each task's own comparison."""

from __future__ import annotations

import math
import re
from typing import Sequence

from mlflow.entities import Run

from experiments.names import ERROR_TAG, SYMPY, recorded, results
from experiments.sweeps.report import figures

KEY_METRICS = {  # results by bare name (see experiments.names), and the check
    "minimize": ("loss",),
    "matmul": ("gflops",),
    "derivative": ("f", SYMPY + "max_rel_err"),
}
DERIVATIVE_METRIC = re.compile(r"^(f|d(\d*)f_\w+)$")


def run_table(runs: Sequence[Run]) -> str:
    """Every run: name, status, device, key metric, and the error of failed runs."""
    rows = [("run", "status", "device", "key metric", "error")]
    for run in sorted(runs, key=lambda run: (task_of(run), run.info.start_time or 0)):
        tags = run.data.tags
        rows.append(
            (
                run.info.run_name or run_id_of(run),
                run.info.status,
                tags.get("device", ""),
                key_metric(run),
                tags.get(ERROR_TAG, "") if run.info.status != "FINISHED" else "",
            )
        )
    return aligned(rows)


def derivative_table(runs: Sequence[Run]) -> str:
    """Per run: the expression, the point, every value, and the worst error against sympy."""
    rows = [("run", "status", "expr", "at", "values", "max abs err", "max rel err")]
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        values_of = results(metrics)
        at = " ".join(f"{k[8:]}={v}" for k, v in sorted(params.items()) if k.startswith("task.at."))
        values = sorted((m for m in values_of if DERIVATIVE_METRIC.match(m)), key=_derivative_order)
        rows.append(
            (
                run.info.run_name or run_id_of(run),
                run.info.status,
                params.get("task.expr", ""),
                at,
                " ".join(f"{m}={number(values_of[m])}" for m in values),
                number(recorded(metrics, SYMPY + "max_abs_err")),
                number(recorded(metrics, SYMPY + "max_rel_err")),
            )
        )
    return aligned(rows)


def speedup_table(rows: Sequence[figures.Speedup]) -> str:
    """Each size and dtype timed on the CPU and a GPU: both times and the ratio."""
    lines = [("size", "dtype", "cpu ms", "device", "device ms", "speed-up")]
    for row in rows:
        lines.append(
            (
                number(row.size),
                row.dtype,
                number(row.cpu_ms),
                row.device,
                number(row.device_ms),
                f"{row.ratio:.3g}x",
            )
        )
    return aligned(lines)


def minimize_table(results: Sequence[figures.MinimizeResult]) -> str:
    """Per run: optimizer, learning rate, final loss and steps to converge."""
    rows = [("run", "optimizer", "lr", "final loss", "steps to converge")]
    for r in results:
        converged = "not settled" if math.isnan(r.converged_at) else f"{r.converged_at:g}"
        rows.append((r.label, r.optimizer, number(r.lr), number(r.final_loss), converged))
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns, left-aligned, two spaces apart; a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def key_metric(run: Run) -> str:
    """The run's key results in words: ``loss=-12``, ``f=25 max_rel_err=0``."""
    metrics = {**run.data.metrics, **results(run.data.metrics)}
    found = {key: recorded(metrics, key) for key in KEY_METRICS.get(task_of(run), ())}
    return " ".join(
        f"{key.rsplit('/', 1)[-1]}={number(value)}"
        for key, value in found.items()
        if value is not None
    )


def _derivative_order(name: str) -> tuple[int, str]:
    match = DERIVATIVE_METRIC.match(name)
    order = 0 if name == "f" else int(match.group(2) or 1)
    return order, name


def counts(runs: Sequence[Run]) -> str:
    """E.g. ``4 runs: 3 finished, 1 failed``."""
    statuses = [run.info.status for run in runs]
    parts = [f"{statuses.count(s)} {s.lower()}" for s in sorted(set(statuses))]
    return f"{plural(len(runs), 'run')}: {', '.join(parts)}"


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def task_of(run: Run) -> str:
    """The task a run executed (its ``task`` tag)."""
    return run.data.tags.get("task", "")


def run_id_of(run: Run) -> str:
    """The run's id."""
    return run.info.run_id


def number(value: float | None) -> str:
    """A value to six significant digits; empty when there is none."""
    return "" if value is None else f"{value:.6g}"
