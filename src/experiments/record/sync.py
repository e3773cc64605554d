"""``python -m experiments.sync [PATH ...]``: upload what run journals hold and a store lacks.

Finds every journal under the paths (default ``outputs/``) and uploads what it holds that
its store does not have yet: runs kept offline (``tracking.offline=true``), runs whose
store went away, runs that crashed. A run the store already has gets the rest of its
records; a run it never had is created (same name, tags, parent, config hash). Uploads
are idempotent: running this twice, or after an upload cut short, duplicates nothing.

A journal without an end line whose process is gone (nothing holds it any more) belongs to
a run that crashed: its records are uploaded and its run is closed FAILED as lost. One
still being written is left alone. Lost RUNNING runs of the experiments touched are closed
too (see ``record.liveness``). One line per journal, then a total; exit status 0 when
everything went, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from experiments import process
from experiments.errors import ConfigError
from experiments.record import journal, liveness, marks
from experiments.record.journal import Header, JournalError
from experiments.record.store import failures, upload
from experiments.record.uris import absolute, redact

log = logging.getLogger(__name__)

DEFAULT_PATH = "outputs"
DEFAULT_LOST_AFTER_S = 300.0


@dataclass
class Plan:
    """One journal to sync, and what became of it."""

    path: Path
    header: Header
    uri: str  # the store, as named in marks and messages: no password
    outcome: str = ""  # uploaded, closed as lost, already synced, superseded, still running, failed
    detail: str = ""


@dataclass
class Totals:
    """The outcome of every journal, for the last line and the exit status."""

    outcomes: list[str] = field(default_factory=list)
    errors: int = 0

    def line(self) -> str:
        order = (
            "uploaded",
            "closed as lost",
            "already synced",
            "superseded",
            "still running",
            "failed",
        )
        counts = [f"{self.outcomes.count(name)} {name}" for name in order if name in self.outcomes]
        total = len(self.outcomes)
        return f"{total} journal{'' if total == 1 else 's'}: " + (", ".join(counts) or "none")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    with process.mlflow_http_bounds(args.timeout_s), process.scrubbed_output():
        return _sync(args)


def _sync(args: argparse.Namespace) -> int:
    totals = Totals()
    plans = collect(args.paths, args.tracking_uri, totals)
    stores: dict[str, object] = {}
    touched: dict[str, set[str]] = {}
    for plan in plans:
        # --tracking-uri is opened as given, a password included; journals name no password.
        opened = absolute(args.tracking_uri) if args.tracking_uri else plan.uri
        tracker = _store(plan.uri, opened, stores, args.timeout_s)
        if isinstance(tracker, str):
            plan.outcome, plan.detail = "failed", tracker
        else:
            sync_one(plan, tracker, args.dry_run, args.lost_after_s)
            if plan.outcome != "failed":
                touched.setdefault(plan.uri, set()).update(_experiments(tracker.client, plan))
        _report(plan, totals, args.dry_run)
    for uri, experiments in touched.items():
        client = stores[uri].client  # type: ignore[attr-defined]
        try:
            lost = liveness.close_lost_runs(
                client, sorted(experiments), args.lost_after_s, dry_run=args.dry_run
            )
        except Exception as error:  # the store failed now: say so, keep the rest
            message = f"{uri}: could not look for lost runs: {failures.describe(error)}"
            print(f"error: {message}", file=sys.stderr)
            totals.errors += 1
            continue
        verb = "would close" if args.dry_run else "closed"
        handled = {marks.State.load(plan.path, uri).run_id for plan in plans}
        for run in lost:
            if run.run_id in handled:
                continue  # its journal says more, above
            print(f"{verb} lost run {run.run_id} ({run.name}): {run.reason}")
    print(totals.line())
    return 1 if totals.errors or "failed" in totals.outcomes else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sync",
        description="Upload run journals (offline runs, runs whose store went away, crashed "
        "runs) to their tracking store, and close lost runs.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        default=[DEFAULT_PATH],
        metavar="PATH",
        help="journals, or directories to search for them (default: outputs)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="upload into this store instead of the one each journal names",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be done; change nothing"
    )
    parser.add_argument(
        "--lost-after-s",
        type=float,
        default=DEFAULT_LOST_AFTER_S,
        metavar="S",
        help="a run of another host silent this long is lost (default: 300)",
    )
    parser.add_argument("--timeout-s", type=float, default=10.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def collect(paths: Sequence[str], tracking_uri: str | None, totals: Totals) -> list[Plan]:
    """The journals under ``paths``, parents (sweeps) before their jobs.

    A path that does not exist or holds no journal, and a file that is not a journal, are
    reported (one line each) and counted as failures.
    """
    plans = []
    if tracking_uri:
        tracking_uri = redact(absolute(tracking_uri))
    for path in paths:
        found = journal.find([path])
        if not Path(path).exists():
            _error(totals, f"{path}: no such file or directory")
        elif not found:
            _error(totals, f"{path}: no run journal found (journal*.jsonl)")
        for file in found:
            try:
                header = journal.read_header(file)
            except JournalError as error:
                _error(totals, str(error))
                totals.outcomes.append("failed")
                continue
            plans.append(Plan(file, header, tracking_uri or header.tracking_uri))
    unique = {plan.path.resolve(): plan for plan in plans}
    # A sweep's parent first, so its jobs kept offline find the run to hang under; a run's
    # attempts in the order they ran, so an attempt that continues a run finds it.
    return sorted(
        unique.values(),
        key=lambda plan: (
            plan.header.parent_journal is not None,
            plan.header.first is not None or plan.header.resumes is not None,
            plan.header.time,
            str(plan.path),
        ),
    )


def sync_one(plan: Plan, tracker: Any, dry_run: bool, lost_after_s: float) -> None:
    """Upload one journal; set ``plan.outcome`` and ``plan.detail``."""
    path, header = plan.path, plan.header
    ended = journal.ended(path)
    if not ended and _still_written(path, header, lost_after_s):
        plan.outcome = "still running"
        plan.detail = f"process {header.pid} on {header.host} is writing it"
        return
    state = marks.State.load(path, plan.uri)
    if state.ended and state.offset >= path.stat().st_size:
        plan.outcome, plan.detail = "already synced", _run(state.run_id, header)
        return
    close = None if ended else ("FAILED", _lost_reason(path, header))
    if dry_run:
        left = path.stat().st_size - state.offset
        plan.outcome = "closed as lost" if close else "uploaded"
        where = _run(state.run_id, header) if state.run_id else f"a run named {header.run_name!r}"
        plan.detail = f"{left:,} bytes of records to {where}"
        return
    try:
        uploader = upload.deliver(tracker.client, path, plan.uri, close=close, bulk=tracker.bulk)
    except Exception as error:  # the store failed or refused: nothing more is marked done
        plan.outcome = "failed"
        again = " (run sync again to resume)" if failures.is_transient(error) else ""
        plan.detail = f"{plan.uri}: {failures.describe(error)}{again}"
        return
    if uploader.superseded is not None:
        plan.outcome = "superseded"
        plan.detail = (
            f"{_run(uploader.run_id, header)} was continued by a later attempt (journal "
            f"{uploader.superseded}): {uploader.counts.points:,} points it lacked, nothing else"
        )
        return
    counts = uploader.counts
    plan.outcome = "closed as lost" if close else "uploaded"
    parts = [
        f"{counts.points:,} points",
        f"{counts.params} params",
        f"{counts.tags} tags",
        f"{counts.artifacts} artifacts",
    ]
    if counts.skipped:
        parts.append(f"{len(counts.skipped)} lines or files skipped")
    status = (journal.last_record(path) or {}).get("status") if ended else "FAILED (lost)"
    plan.detail = f"{_run(uploader.run_id, header)}: {', '.join(parts)}; {status}"


def _still_written(path: Path, header: Header, lost_after_s: float) -> bool:
    held = journal.held(path)
    if held is not None:
        return held
    # No working locks (some network filesystems): the process, or the journal's age.
    if liveness.same_place(header.host, header.place):
        return liveness.process_alive(header.pid, header.pid_started)
    return time.time() - path.stat().st_mtime < lost_after_s


def _lost_reason(path: Path, header: Header) -> str:
    last = (journal.last_record(path) or {}).get("time", header.time)
    return (
        f"{liveness.LOST_PREFIX} process {header.pid} on {header.host} ended without closing "
        f"the run (last record {liveness.heartbeat(last)})"
    )


def _store(uri: str, opened: str, stores: dict[str, object], timeout_s: float) -> object:
    """The store ``uri`` (a ``Tracker`` on ``opened``), or the one line why it cannot be."""
    if uri not in stores:
        from experiments.record.store.tracker import Tracker

        try:
            stores[uri] = Tracker(opened, timeout_s)
        except ConfigError as error:
            stores[uri] = str(error).replace("tracking.uri=", "", 1)
    return stores[uri]


def _experiments(client: object, plan: Plan) -> set[str]:
    state = marks.State.load(plan.path, plan.uri)
    if state.experiment_id:
        return {state.experiment_id}
    try:
        found = client.get_experiment_by_name(plan.header.experiment)  # type: ignore[attr-defined]
    except Exception:  # only used to look for lost runs; the upload itself went
        return set()
    return {found.experiment_id} if found is not None else set()


def _run(run_id: str | None, header: Header) -> str:
    return f"run {run_id} ({header.run_name})" if run_id else f"({header.run_name})"


def _report(plan: Plan, totals: Totals, dry_run: bool) -> None:
    totals.outcomes.append(plan.outcome)
    verb = plan.outcome
    if dry_run and verb in ("uploaded", "closed as lost"):
        verb = f"would be {verb}"
    shown = os.path.relpath(plan.path)
    where = plan.path if shown.startswith("..") else shown
    if plan.outcome == "failed":
        print(f"error: {where}: {plan.detail}", file=sys.stderr, flush=True)
    else:
        print(f"{verb}: {where}: {plan.detail}", flush=True)


def _error(totals: Totals, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    totals.errors += 1
