"""What a report holds, and where it goes: built from runs, written to a directory, logged
into a sweep's parent run."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from experiments.sweeps.report import figures
from experiments.sweeps.report.selection import select
from experiments.sweeps.report.tables import (
    derivative_table,
    minimize_table,
    run_table,
    speedup_table,
    task_of,
)

ARTIFACT_DIR = "report"
FIGURE_DPI = 90


@dataclass
class Report:
    """What the report produced: the run table, then per-task figures and tables."""

    table: str
    figures: dict[str, Figure] = field(default_factory=dict)  # file name -> figure
    tables: dict[str, str] = field(default_factory=dict)  # file name -> text


def build(client: MlflowClient, runs: Sequence[Run]) -> Report:
    """The run table, and each task's figures and tables (figures from FINISHED runs)."""
    report = Report(run_table(runs))
    report.tables["table.txt"] = report.table
    finished = [run for run in runs if run.info.status == "FINISHED"]
    _add_matmul(report, [run for run in finished if task_of(run) == "matmul"])
    _add_minimize(report, client, [run for run in finished if task_of(run) == "minimize"])
    derivative = [run for run in runs if task_of(run) == "derivative"]
    if derivative:
        report.tables["derivative.txt"] = derivative_table(derivative)
    return report


def write(report: Report, out: Path) -> Path:
    """Write the figures (PNG) and tables (text) into ``out``; return it."""
    out.mkdir(parents=True, exist_ok=True)
    for name, figure in report.figures.items():
        figure.savefig(out / name, dpi=FIGURE_DPI)
    for name, text in report.tables.items():
        (out / name).write_text(text + "\n", encoding="utf-8")
    return out


def default_out(label: str) -> Path:
    """``outputs/reports/<label>-<time>``, made unique if a report of the same second exists."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", label).strip("-")[:60] or "report"
    base = Path("outputs") / "reports" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _add_matmul(report: Report, runs: list[Run]) -> None:
    results = figures.matmul_results(runs)
    if not results:
        return
    report.figures["matmul.png"] = figures.matmul_figure(results)
    rows = figures.speedups(results)
    if rows:
        report.figures["matmul_speedup.png"] = figures.speedup_figure(rows)
        report.tables["matmul_speedup.txt"] = speedup_table(rows)


def _add_minimize(report: Report, client: MlflowClient, runs: list[Run]) -> None:
    results = figures.minimize_results(client, runs)
    if not results:
        return
    report.figures["minimize.png"] = figures.minimize_figure(results)
    report.figures["minimize_loss_curves.png"] = figures.loss_curves_figure(results)
    report.tables["minimize.txt"] = minimize_table(results)


def publish(client: MlflowClient, parent: str, out: str) -> dict[str, Any]:
    """Report a sweep's runs into ``out`` and log it into its parent run under ``report/``.

    Called at the end of every sweep by the recording process, where MLflow is loaded
    (``record.call``).

    Returns:
        The figures and tables written, by file name.
    """
    selection = select(client, parent=parent)
    built = build(client, selection.runs)
    written = write(built, Path(out))
    client.log_artifacts(parent, str(written), ARTIFACT_DIR)
    return {"figures": sorted(built.figures), "tables": sorted(built.tables)}
