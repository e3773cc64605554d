"""``python -m experiments.report``: compare the runs of a sweep or an experiment.

Reads the runs back from MLflow, prints a table of every run (status, key metric, and the
reason of failures), and writes per-task figures and tables under ``--out``; when reporting
a sweep, also logs them to its parent run under ``report/``. Figures show FINISHED runs
only. See :mod:`.figures` for what each figure shows and for how "steps to converge" is
defined.

Usage::

    python -m experiments.report                      # the most recent sweep
    python -m experiments.report --parent RUN_ID      # one sweep: its child runs
    python -m experiments.report --experiment matmul  # every run of an experiment
    python -m experiments.report --compare A B        # did run (or sweep) B reproduce A?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from experiments import process
from experiments.errors import ConfigError, first_line
from experiments.record.store.tracker import open_existing
from experiments.reproduce import compare
from experiments.reproduce.records import get_run
from experiments.sweeps.report.assemble import ARTIFACT_DIR, build, default_out, write
from experiments.sweeps.report.selection import select
from experiments.sweeps.report.tables import plural

OPEN_TIMEOUT_S = 10.0  # how long to wait for a tracking server


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (1 after a one-line error)."""
    args = parse_args(argv)
    process.set_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with process.mlflow_http_bounds(OPEN_TIMEOUT_S), process.scrubbed_output():
            return _report(args)
    finally:
        process.restore_env()  # called in-process (tests, scripts), it leaves nothing set


def _report(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    try:
        client = open_store(args.tracking_uri)
        selection = select(client, parent=args.parent, experiment=args.experiment)
        report = build(client, selection.runs)
        out = write(report, args.out or default_out(selection.label))
        if selection.parent is not None:
            client.log_artifacts(selection.parent.info.run_id, str(out), ARTIFACT_DIR)
    except (ConfigError, MlflowException, OSError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    print(f"{selection.title}\n\n{report.table}\n")
    for name, text in report.tables.items():
        if name != "table.txt":
            print(f"{name}:\n{text}\n")
    figures, tables = len(report.figures), len(report.tables)
    print(f"wrote {plural(figures, 'figure')} and {plural(tables, 'table')} to {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """The verdict on two runs or two sweeps that exist: the second against the first."""
    try:
        client = open_store(args.tracking_uri)
        first, second = (
            compare.side(client, get_run(client, run_id, args.tracking_uri or "the store"))
            for run_id in args.compare
        )
        verdict = compare.compare(first, second)
    except (ConfigError, MlflowException, OSError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    print(verdict.text(f"{second.label} against {first.label}"), end="")
    return verdict.status  # as a rerun's: 0 reproduced, 3 not


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's options; ``--parent`` and ``--experiment`` exclude each other."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Compare the runs of a sweep (parent run) or of an experiment.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its child runs")
    which.add_argument("--experiment", metavar="NAME", help="every run of this experiment")
    which.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="two runs (or two sweeps' parent runs): did B reproduce A? (as experiments.rerun)",
    )
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
    return open_existing(uri, "--tracking-uri", OPEN_TIMEOUT_S).client
