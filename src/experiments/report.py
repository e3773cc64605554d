"""Compare the runs of a sweep or an experiment: ``python -m experiments.report``.

Reads the runs back from MLflow, prints a table of every run (status, key metric, and the
reason of failures), and writes per-task figures and tables under ``--out``; when reporting
a sweep, also logs them to its parent run under ``report/``. Figures show FINISHED runs
only. See :mod:`experiments.report_figures` for what each figure shows and for how
"steps to converge" is defined.

Usage::

    python -m experiments.report                      # the most recent sweep
    python -m experiments.report --parent RUN_ID      # one sweep: its child runs
    python -m experiments.report --experiment matmul  # every run of an experiment
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from experiments import plots
from experiments import report_figures as figures
from experiments.errors import ConfigError
from experiments.names import results
from experiments.tracking import ERROR_TAG, Tracker, resolve_uri

ARTIFACT_DIR = "report"
SWEEP_TAG = "sweep"
KEY_METRICS = {  # results by bare name (see experiments.names), and the check
    "minimize": ("loss",),
    "matmul": ("gflops",),
    "derivative": ("f", "check/max_rel_err"),
}
DERIVATIVE_METRIC = re.compile(r"^(f|d(\d*)f_\w+)$")


@dataclass
class Selection:
    """The runs to report, and the sweep's parent run when reporting a sweep."""

    runs: list[Run]
    label: str  # names the output directory
    title: str
    parent: Run | None = None


@dataclass
class Report:
    """What the report produced: the run table, then per-task figures and tables."""

    table: str
    figures: dict[str, Figure] = field(default_factory=dict)  # file name -> figure
    tables: dict[str, str] = field(default_factory=dict)  # file name -> text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (1 after a one-line error)."""
    args = parse_args(argv)
    try:
        client = open_store(args.tracking_uri)
        selection = select(client, parent=args.parent, experiment=args.experiment)
        report = build(client, selection.runs)
        out = write(report, args.out or default_out(selection.label))
        if selection.parent is not None:
            client.log_artifacts(selection.parent.info.run_id, str(out), ARTIFACT_DIR)
    except (ConfigError, MlflowException, OSError) as error:
        print(f"error: {_first_line(error)}", file=sys.stderr)
        return 1
    print(f"{selection.title}\n\n{report.table}\n")
    for name, text in report.tables.items():
        if name != "table.txt":
            print(f"{name}:\n{text}\n")
    figures, tables = len(report.figures), len(report.tables)
    print(f"wrote {_plural(figures, 'figure')} and {_plural(tables, 'table')} to {out}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options; ``--parent`` and ``--experiment`` exclude each other."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Compare the runs of a sweep (parent run) or of an experiment.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its child runs")
    which.add_argument("--experiment", metavar="NAME", help="every run of this experiment")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="where to write; default outputs/reports/<sweep-or-experiment>-<time>",
    )
    return parser.parse_args(argv)


def open_store(uri: str | None) -> MlflowClient:
    """A client on an existing store; a SQLite file that is not there is an error, not created."""
    resolved, source = resolve_uri(uri)
    source = "--tracking-uri" if source == "tracking.uri" else source
    path = _sqlite_file(resolved)
    if path is not None and not path.is_file():
        raise ConfigError(f"{source}={resolved}: no tracking store at {path}")
    try:
        return Tracker(resolved).client
    except ConfigError as error:
        raise ConfigError(str(error).replace("tracking.uri=", f"{source}=", 1)) from error


def select(
    client: MlflowClient, parent: str | None = None, experiment: str | None = None
) -> Selection:
    """The runs of a parent run, of an experiment, or (neither given) of the latest sweep."""
    if experiment is not None:
        return _experiment_runs(client, experiment)
    found = _parent_run(client, parent) if parent is not None else _latest_sweep(client)
    runs = _search(
        client, _experiment_ids(client), f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{_id(found)}'"
    )
    # A resumed sweep's skipped jobs point to runs of an earlier sweep: report them too.
    reused = found.data.tags.get("sweep.reused_runs", "")
    runs += [client.get_run(run_id) for run_id in reused.split(",") if len(run_id) == 32]
    if not runs:
        raise ConfigError(f"no runs found under parent run {_id(found)} ({found.info.run_name})")
    name = found.info.run_name or _id(found)
    return Selection(runs, name, f"Sweep {name!r} (run {_id(found)}): {_counts(runs)}", found)


def build(client: MlflowClient, runs: Sequence[Run]) -> Report:
    """The run table, and each task's figures and tables (figures from FINISHED runs)."""
    report = Report(run_table(runs))
    report.tables["table.txt"] = report.table
    finished = [run for run in runs if run.info.status == "FINISHED"]
    _add_matmul(report, [run for run in finished if _task(run) == "matmul"])
    _add_minimize(report, client, [run for run in finished if _task(run) == "minimize"])
    derivative = [run for run in runs if _task(run) == "derivative"]
    if derivative:
        report.tables["derivative.txt"] = derivative_table(derivative)
    return report


def write(report: Report, out: Path) -> Path:
    """Write the figures (PNG) and tables (text) into ``out``; return it."""
    out.mkdir(parents=True, exist_ok=True)
    for name, figure in report.figures.items():
        plots.save(figure, out / name)
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


def run_table(runs: Sequence[Run]) -> str:
    """Every run: name, status, device, key metric, and the error of failed runs."""
    rows = [("run", "status", "device", "key metric", "error")]
    for run in sorted(runs, key=lambda run: (_task(run), run.info.start_time or 0)):
        tags = run.data.tags
        rows.append(
            (
                run.info.run_name or _id(run),
                run.info.status,
                tags.get("device", ""),
                _key_metric(run),
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
                run.info.run_name or _id(run),
                run.info.status,
                params.get("task.expr", ""),
                at,
                " ".join(f"{m}={_format(values_of[m])}" for m in values),
                _format(metrics.get("check/max_abs_err")),
                _format(metrics.get("check/max_rel_err")),
            )
        )
    return aligned(rows)


def speedup_table(rows: Sequence[figures.Speedup]) -> str:
    """Each size and dtype timed on the CPU and a GPU: both times and the ratio."""
    lines = [("size", "dtype", "cpu ms", "device", "device ms", "speed-up")]
    for row in rows:
        lines.append(
            (
                _format(row.size),
                row.dtype,
                _format(row.cpu_ms),
                row.device,
                _format(row.device_ms),
                f"{row.ratio:.3g}x",
            )
        )
    return aligned(lines)


def minimize_table(results: Sequence[figures.MinimizeResult]) -> str:
    """Per run: optimizer, learning rate, final loss and steps to converge."""
    rows = [("run", "optimizer", "lr", "final loss", "steps to converge")]
    for r in results:
        converged = "not settled" if math.isnan(r.converged_at) else f"{r.converged_at:g}"
        rows.append((r.label, r.optimizer, _format(r.lr), _format(r.final_loss), converged))
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns, left-aligned, two spaces apart; a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


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


def _experiment_runs(client: MlflowClient, name: str) -> Selection:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = ", ".join(sorted(e.name for e in _all_pages(client.search_experiments)))
        raise ConfigError(f"--experiment {name!r}: no such experiment; experiments: {names}")
    runs = [
        run
        for run in _search(client, [experiment.experiment_id])
        if run.data.tags.get(SWEEP_TAG) != "true"  # a sweep's parent is not a job
    ]
    if not runs:
        raise ConfigError(f"no runs found in experiment {name!r}")
    return Selection(runs, name, f"Experiment {name!r}: {_counts(runs)}")


def _parent_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"--parent {run_id}: no such run ({_first_line(error)})") from error


def _latest_sweep(client: MlflowClient) -> Run:
    found = client.search_runs(
        _experiment_ids(client),
        filter_string=f"tags.{SWEEP_TAG} = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise ConfigError(
            "no sweep (parent run) in this store; pass --parent RUN_ID or --experiment NAME"
        )
    return found[0]


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in _all_pages(client.search_experiments)]


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    """Every matching run, oldest first, across as many pages as MLflow returns."""
    return _all_pages(
        lambda page_token: client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
    )


def _all_pages(fetch: Callable[..., list]) -> list:
    found, token = [], None
    while True:
        page = fetch(page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _key_metric(run: Run) -> str:
    metrics = {**run.data.metrics, **results(run.data.metrics)}
    shown = [key for key in KEY_METRICS.get(_task(run), ()) if key in metrics]
    return " ".join(f"{key.rsplit('/', 1)[-1]}={_format(metrics[key])}" for key in shown)


def _derivative_order(name: str) -> tuple[int, str]:
    match = DERIVATIVE_METRIC.match(name)
    order = 0 if name == "f" else int(match.group(2) or 1)
    return order, name


def _counts(runs: Sequence[Run]) -> str:
    statuses = [run.info.status for run in runs]
    parts = [f"{statuses.count(s)} {s.lower()}" for s in sorted(set(statuses))]
    return f"{_plural(len(runs), 'run')}: {', '.join(parts)}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _task(run: Run) -> str:
    return run.data.tags.get("task", "")


def _id(run: Run) -> str:
    return run.info.run_id


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _sqlite_file(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return None
    return Path(uri[len(prefix) :])


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
