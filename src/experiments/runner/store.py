"""Where a run is recorded, in the record path's terms: its store, its settings, its journal.

The runner resolves these from the ``tracking`` settings; the record path takes them as
they are (:mod:`experiments.record`).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from experiments import record
from experiments.record import liveness, uris
from experiments.record.journal import Header


def store_of(tracking: Any) -> record.Store | None:
    """The store ``tracking`` settings name, resolved here (None: kept offline)."""
    if tracking.offline:
        return None
    uri, source = uris.resolve(tracking.uri)
    uris.check(uri, source)
    return record.Store(uris.absolute(uri), source, float(tracking.timeout_s))


def live_settings(tracking: Any) -> record.Settings:
    """How a live run retries its store and beats (``tracking.*``)."""
    return record.Settings(
        retry_s=float(tracking.retry_s),
        heartbeat_s=float(tracking.heartbeat_s),
        lost_after_s=float(tracking.lost_after_s),
        recorder_wait_s=float(tracking.recorder_wait_s),
        stop_wait_s=float(tracking.stop_wait_s),
    )


def journal_header(tracking: Any, experiment: str, run_name: str, out: Path) -> Header:
    """The journal header of a run recorded with ``tracking`` settings into ``out``."""
    uri = uris.absolute(uris.resolve(tracking.uri)[0])
    return Header(
        tracking_uri=uris.redact(uri),
        experiment=experiment,
        run_name=run_name,
        output_dir=str(out.resolve()),
        host=liveness.host(),
        place=liveness.place(),
        pid=os.getpid(),
        pid_started=liveness.process_started(os.getpid()),
        offline=bool(tracking.offline),
    )


def not_recorded_line(delivery: record.Delivery) -> str:
    """What to tell the user about a run whose records did not all reach the store."""
    directory = delivery.journal.parent
    return (
        f"{delivery.reason}; the run's records are kept in {directory}; upload them with: "
        f"python -m experiments.sync {directory}"
    )


def adhoc_directory() -> Path:
    """A fresh directory for a run started without one (``outputs/adhoc/<time>-<id>``)."""
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return Path("outputs") / "adhoc" / f"{stamp}-{uuid.uuid4().hex[:6]}"
