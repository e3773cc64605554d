"""What a report holds, and where it goes: built from runs, written to a directory, logged
into a sweep's parent run.

Per task among the runs: the figures every task gets (:mod:`.figures`: the objective against
each setting the runs vary, its history per run), then the task's own (``Task.report``, a
function named ``"module:function"``, called with :class:`~experiments.api.ReportRun` views
of the task's runs). A sweep hands its task's over by name (``reports``); otherwise they
are looked up in the task registry, whose entries import no torch for the built-in tasks. A
task that is not installed here still gets the figures every task gets. What a task says
of its runs (its objective's metric, its direction) is read from their tags.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from experiments.api import ReportRun, load_reference
from experiments.errors import ConfigError
from experiments.names import DIRECTION_TAG, OBJECTIVE, OBJECTIVE_TAG, recorded_name
from experiments.sweeps.report import figures
from experiments.sweeps.report.selection import select
from experiments.sweeps.report.tables import run_table, table_key, task_of

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"
FIGURE_DPI = 90


@dataclass
class Report:
    """What the report produced: the run table, then per-task figures and tables."""

    table: str
    figures: dict[str, Figure] = field(default_factory=dict)  # file name -> figure
    tables: dict[str, str] = field(default_factory=dict)  # file name -> text


@dataclass
class _About:
    """What the report needs to know of one task's runs."""

    objective: Optional[str]  # the objective's metric, as the runs recorded it
    direction: str
    table: tuple[str, ...]  # the key metrics of the run table
    report: Optional[str]  # its own figures: "module:function"


def build(
    client: MlflowClient, runs: Sequence[Run], reports: Optional[Mapping[str, str]] = None
) -> Report:
    """The run table, and each task's figures and tables (figures from FINISHED runs).

    Args:
        reports: task name -> its ``Task.report`` (a sweep's launching process knows its
            task's); a task not named here is looked up in the registry.
    """
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        by_task.setdefault(task_of(run), []).append(run)
    about = {name: _about(name, members, reports or {}) for name, members in by_task.items()}
    keys = {name: info.table for name, info in about.items()}
    report = Report(run_table(runs, keys))
    report.tables["table.txt"] = report.table
    for name in sorted(by_task):
        views = [view(client, run) for run in by_task[name]]
        _add_task(report, name or "runs", views, about[name])
    return report


def view(client: MlflowClient, run: Run) -> ReportRun:
    """A run as a task's report sees it: plain data; its histories read once, on demand."""
    histories: dict[str, list[tuple[int, float]]] = {}

    def history(key: str) -> list[tuple[int, float]]:
        if key not in histories:
            found = client.get_metric_history(run.info.run_id, key)
            histories[key] = sorted((point.step, point.value) for point in found)
        return histories[key]

    return ReportRun(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        history=history,
    )


def _about(name: str, runs: Sequence[Run], reports: Mapping[str, str]) -> _About:
    """Its objective and direction from its runs' tags (else from the task, where it is
    installed here, for runs recorded before the tags); its own figures and table."""
    tags = next((run.data.tags for run in runs if OBJECTIVE_TAG in run.data.tags), {})
    objective, direction = tags.get(OBJECTIVE_TAG), tags.get(DIRECTION_TAG, "minimize")
    task = _registered(name)
    if objective is None and task is not None:
        objective, direction = task.objective_key, task.direction
    if objective is None:  # a run of no known task: its one objective/ metric, if any
        keys = {key for run in runs for key in run.data.metrics if key.startswith(OBJECTIVE)}
        objective = next(iter(keys)) if len(keys) == 1 else None
    table = tuple(table_key(item) for item in (task.table if task is not None else ()))
    report = reports.get(name) or (task.report if task is not None else None)
    return _About(objective, direction, ((objective,) if objective else ()) + table, report)


def _registered(name: str) -> Any:
    from experiments.tasks import registry

    try:
        return registry.find(name)
    except ConfigError as error:  # installed but broken here: its runs still get a report
        log.warning("%s; its runs get the figures every task gets", error)
        return None


def _add_task(report: Report, name: str, runs: list[ReportRun], about: _About) -> None:
    finished = [run for run in runs if run.status == "FINISHED"]
    if about.objective is not None and finished:
        key = _recorded(finished, about.objective)
        settings = figures.varying(finished)
        if settings:
            report.figures[f"{name}_objective.png"] = figures.objective_figure(
                finished, key, about.direction, settings
            )
        drawn = figures.history_figure(finished, key, about.direction)
        if drawn is not None:
            report.figures[f"{name}_history.png"] = drawn
    if about.report is not None:
        _add_own(report, name, runs, about.report)


def _recorded(runs: Sequence[ReportRun], key: str) -> str:
    """The objective's metric as these runs recorded it (a legacy name in older runs)."""
    return next((found for run in runs if (found := recorded_name(run.metrics, key))), key)


def _add_own(report: Report, name: str, runs: list[ReportRun], reference: str) -> None:
    """The task's own figures and tables; one that fails is a warning, not a lost report."""
    try:
        made = load_reference(reference, f"task {name!r}: report")(runs)
    except Exception as error:  # the task's code: whatever it raised, the rest stands
        log.warning("task %r: its own report figures were not drawn: %s", name, error)
        return
    for file, item in (made or {}).items():
        if isinstance(item, Figure):
            report.figures[file] = item
        elif isinstance(item, str):
            report.tables[file] = item
        else:
            log.warning("task %r: its report's %s is neither a Figure nor a text", name, file)


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


def publish(
    client: MlflowClient, parent: str, out: str, reports: Optional[Mapping[str, str]] = None
) -> dict[str, Any]:
    """Report a sweep's runs into ``out`` and log it into its parent run under ``report/``.

    Called at the end of every sweep by the recording process, where MLflow is loaded
    (``record.call``); ``reports``: the sweep's task's own figures, by name.

    Returns:
        The figures and tables written, by file name.
    """
    selection = select(client, parent=parent)
    built = build(client, selection.runs, reports)
    written = write(built, Path(out))
    client.log_artifacts(parent, str(written), ARTIFACT_DIR)
    return {"figures": sorted(built.figures), "tables": sorted(built.tables)}
