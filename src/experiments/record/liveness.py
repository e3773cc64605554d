"""Whether a run's process is still alive, and closing the runs whose process is gone.

Every run records where it runs (tags ``host``, ``host.id``, ``pid``, ``pid.started``) and
a ``heartbeat`` tag, refreshed while it runs. ``host.id`` tells apart what a host name does
not: the machine's boot and the process's pid namespace, so two containers with one host
name, or a machine rebooted since, are different places. A RUNNING run is *lost* when its
process is gone (the same place: that pid is not alive, or is another process now) or, seen
from anywhere else, or where it cannot be told, when its heartbeat is older than
``tracking.lost_after_s``, **and** no process is uploading its journal: the process that
uploads a journal (the run's recording process, or ``python -m experiments.sync``, perhaps
on another host and long after the run's own process ended) says so in the same way, in
``upload.host``, ``upload.host.id``, ``upload.pid``, ``upload.pid.started`` and an
``upload.heartbeat`` it refreshes while it sends (:func:`uploader_tags`). Lost runs are
closed FAILED with an ``error`` tag that says so, where, and when the run was last seen.
Runs without a heartbeat tag were not started by this package and are never touched.

Closing is checked again on the run as it is at that moment, just before it is closed; the
uploader that ends a run checks its end after writing it (``store.upload``), so a run ended
by its journal while another process took it for lost keeps the journal's end.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Mapping, Sequence

from experiments.names import ERROR_TAG

log = logging.getLogger(__name__)

HOST_TAG = "host"
PLACE_TAG = "host.id"  # boot id and pid namespace: where a pid means that process
PID_TAG = "pid"
STARTED_TAG = "pid.started"
HEARTBEAT_TAG = "heartbeat"
OUTPUT_DIR_TAG = "output_dir"
LOST_PREFIX = "lost:"
UPLOAD_PREFIX = "upload."  # the same tags, of the process uploading the run's journal
UPLOAD_BEAT_S = 30.0  # how often an uploader refreshes its upload.heartbeat while it sends


def host() -> str:
    """This machine's name, as runs record it."""
    return socket.gethostname()


@lru_cache(maxsize=1)
def place() -> str | None:
    """Where a pid of this process means this process: the boot and the pid namespace.

    ``<boot id>/<pid namespace>`` on Linux; None where the system does not say (then only
    heartbeats tell a live run from a lost one).
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return None
    return f"{boot}/{namespace.removeprefix('pid:[').removesuffix(']')}"


def same_place(where: str | None, where_id: str | None) -> bool | None:
    """Whether a process recorded at host ``where``, place ``where_id``, is this one's place.

    True: its pid can be looked at here. False: elsewhere. None: cannot tell (recorded
    without a place, or this system has none), so only its heartbeat can.
    """
    if where != host():
        return False
    here = place()
    if where_id is None or here is None:
        return None
    return where_id == here


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where the system says (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime"))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    return round(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), 2)


def identity_tags(prefix: str = "") -> dict[str, str]:
    """The tags that say which process on which host records a run (``prefix``: in what
    role; ``upload.`` for the process that uploads its journal)."""
    tags = {prefix + HOST_TAG: host(), prefix + PID_TAG: str(os.getpid())}
    where_id = place()
    if where_id is not None:
        tags[prefix + PLACE_TAG] = where_id
    started = process_started(os.getpid())
    if started is not None:
        tags[prefix + STARTED_TAG] = f"{started:.2f}"
    return tags


def uploader_tags() -> dict[str, str]:
    """The tags by which this process says it is uploading a run's journal now."""
    return {**identity_tags(UPLOAD_PREFIX), UPLOAD_PREFIX + HEARTBEAT_TAG: heartbeat()}


def heartbeat(ms: int | None = None) -> str:
    """A heartbeat tag value: the time in UTC, ISO 8601 to the second."""
    moment = time.time() if ms is None else ms / 1000
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_heartbeat(text: str | None) -> int | None:
    """Milliseconds since the epoch from a heartbeat tag value, or None if it is not one."""
    if not text:
        return None
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(moment.timestamp() * 1000)


def signal_process(pid: int, started: float | None, signum: int) -> bool:
    """Send ``signum`` to process ``pid`` only if it is the process that started then.

    Where Linux offers a pidfd, the process is held by it before it is checked, so a pid
    reused between the check and the signal cannot be signalled. Returns whether it was sent.
    """
    handle = None
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass  # no pidfd here: the check, then kill
    try:
        if not process_alive(pid, started):
            return False
        if handle is not None:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(pid, signum)
        return True
    except OSError:
        return False
    finally:
        if handle is not None:
            os.close(handle)


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` on this host is alive and is the process that started then.

    A zombie (ended, not yet reaped by its parent) is not alive; a pid reused by another
    process since (its start time differs from ``started``) is not the same process.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
    except (OSError, IndexError):
        pass  # no /proc: the signal test above is all there is
    if started is not None:
        now_started = process_started(pid)
        if now_started is not None and abs(now_started - started) > 0.05:
            return False
    return True


def lost_reason(
    tags: Mapping[str, str], now_ms: int, lost_after_s: float
) -> tuple[str, int] | None:
    """Why a RUNNING run with these tags is lost, and when it was last seen; None if it is not.

    Args:
        tags: the run's tags.
        now_ms: the time now, in milliseconds since the epoch.
        lost_after_s: a heartbeat older than this, seen from another place, means lost.
    """
    last_seen = parse_heartbeat(tags.get(HEARTBEAT_TAG))
    if last_seen is None:
        return None  # not a run of this package: leave it alone
    reason = _gone(tags, "", now_ms, lost_after_s)
    if reason is None:
        return None
    if UPLOAD_PREFIX + HEARTBEAT_TAG in tags:
        if _gone(tags, UPLOAD_PREFIX, now_ms, lost_after_s) is None:
            return None  # its journal is being uploaded: the uploader will end it
    directory = tags.get(OUTPUT_DIR_TAG)
    if directory:
        reason += f"; its records are kept in {directory}: python -m experiments.sync {directory}"
    return reason, last_seen


def _gone(tags: Mapping[str, str], prefix: str, now_ms: int, lost_after_s: float) -> str | None:
    """Why the process the tags name under ``prefix`` is gone, or None while it may live."""
    where, pid = tags.get(prefix + HOST_TAG, "?"), tags.get(prefix + PID_TAG, "?")
    seen = tags.get(prefix + HEARTBEAT_TAG)
    if same_place(where, tags.get(prefix + PLACE_TAG)) and pid.isdigit():
        started = tags.get(prefix + STARTED_TAG)
        if process_alive(int(pid), float(started) if _is_number(started) else None):
            return None
        return f"{LOST_PREFIX} process {pid} on {where} is gone (last seen {seen})"
    beat = parse_heartbeat(seen)
    age_s = (now_ms - beat) / 1000 if beat is not None else math.inf
    if age_s <= lost_after_s:
        return None
    return (
        f"{LOST_PREFIX} no heartbeat from process {pid} on {where} for {age_s / 60:.0f} min "
        f"(last seen {seen})"
    )


@dataclass
class LostRun:
    """A RUNNING run found lost (and closed, unless it was a dry run)."""

    run_id: str
    name: str
    reason: str


def close_lost_runs(
    client: Any, experiment_ids: Sequence[str], lost_after_s: float, dry_run: bool = False
) -> list[LostRun]:
    """Close every lost RUNNING run of the experiments: FAILED, the reason in ``error``.

    One query for the RUNNING runs; each that looks lost is read again just before it is
    closed (another process may have ended it, or begun uploading its journal, since the
    query), then two calls close it. The end time recorded is the last heartbeat. Another
    process closing the same run at the same moment is no error.
    """
    from mlflow.entities import RunStatus

    from experiments.record.store import failures

    if not experiment_ids:
        return []
    running = client.search_runs(
        list(experiment_ids), filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    closed = []
    for run in running:
        if lost_reason(run.data.tags, _now_ms(), lost_after_s) is None:
            continue
        if not dry_run:
            run = client.get_run(run.info.run_id)
            if run.info.status != "RUNNING":
                continue  # ended meanwhile, by its own process or its uploader
        found = lost_reason(run.data.tags, _now_ms(), lost_after_s)
        if found is None:
            continue
        reason, last_seen = found
        closed.append(LostRun(run.info.run_id, run.info.run_name or "", reason))
        if dry_run:
            continue
        failures.again_on_conflict(client.set_tag, run.info.run_id, ERROR_TAG, reason[:5000])
        client.set_terminated(
            run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED), end_time=last_seen
        )
        log.warning("closed lost run %s (%s): %s", run.info.run_id, run.info.run_name, reason)
    return closed


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
