"""A run while it executes: its journal, uploaded as it grows, and a heartbeat.

:class:`LiveRun` owns one run's journal writer. The task's records go to the journal (one
``write`` each); every few hundred records or few seconds, the task's own thread sends
what is new to the store, in batches, as the runs were always recorded. A small thread
beside it makes the journal durable every second and sets the run's ``heartbeat`` tag
every ``tracking.heartbeat_s``. Uploading stays on the task's thread on purpose: a second
Python thread doing the uploads would compete for the interpreter lock with a task loop
that releases it at every torch call, and slow that loop down several times. The uploader
sits behind one seam (:class:`experiments.upload.Uploader`) so a process of its own can
take it over.

When a store call fails with an error worth retrying (:func:`upload.is_transient`), the
task stops uploading and goes on; the thread retries with backoff and hands uploading back
when the store answers. If it answers within ``tracking.retry_s`` nothing is lost and the
run ends as usual. If not, the journal keeps everything, the thread tries now and then, and
:meth:`LiveRun.close` reports the run as not recorded, naming the directory to sync.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from experiments import journal, liveness, signals, upload
from experiments.journal import Header, Writer
from experiments.recording import JournalRecorder

log = logging.getLogger(__name__)

UPLOAD_EVERY_RECORDS = 1000  # the task sends what is new after this many records...
UPLOAD_EVERY_S = 5.0  # ... or this long after the last upload, whichever comes first
SYNC_EVERY_S = 1.0  # how often the journal is made durable (fsync)
MAX_BACKOFF_S = 5.0
SIGNAL_GRACE_S = 5.0  # after a signal, how long closing may wait for the store
RETRY_OF_TAG = "retry_of"  # a job run again in its directory (a requeued Slurm job)


@dataclass
class Settings:
    """How a live run talks to its store (``tracking.*``)."""

    retry_s: float = 60.0
    heartbeat_s: float = 30.0


@dataclass
class Delivery:
    """How a closed run's records fared.

    Attributes:
        journal: the run's journal.
        recorded: every record, the end included, is in the store.
        offline: the run was kept offline on purpose (``tracking.offline=true``).
        reason: why the records are not all in the store (None when they are).
    """

    journal: Path
    recorded: bool
    offline: bool = False
    reason: Optional[str] = None


class LiveRun:
    """Records one run: the journal now, the store as soon as it takes it.

    Use :func:`start` to create one, and :meth:`close` to end it.
    """

    def __init__(
        self,
        writer: Writer,
        client: Any,
        tracking_uri: str,
        run_id: Optional[str],
        experiment_id: Optional[str],
        settings: Settings,
        unrecorded: Optional[str] = None,
    ) -> None:
        self.writer = writer
        self.unrecorded = unrecorded
        self.client = client
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.settings = settings
        self.recorder = JournalRecorder(self._append, writer.path.parent)
        self._since_upload = 0
        self._upload_at = time.monotonic() + UPLOAD_EVERY_S
        self._lock = threading.Lock()  # one upload at a time
        self._healthy = True  # False: the store failed; the thread retries, the task does not
        self._outage_since: Optional[float] = None
        self._retry_at = 0.0
        self._lost: Optional[str] = None
        self._refused: Optional[str] = None
        self._uploader: Optional[upload.Uploader] = None
        if client is not None:
            offset = writer.path.stat().st_size  # what the run was created with is there
            state = upload.State(tracking_uri, run_id, experiment_id, offset=offset)
            state.save(writer.path)
            self._uploader = upload.Uploader(client, writer.path, state)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"heartbeat {writer.path}", daemon=True
        )
        self._thread.start()

    @property
    def journal(self) -> Path:
        return self.writer.path

    def close(self, status: str, error: Optional[str] = None, hurry: bool = False) -> Delivery:
        """End the run: write its end, then wait until the store has everything or cannot.

        Call it with signals deferred (``signals.deferred``): it must run to its end.

        Args:
            status: FINISHED, FAILED or KILLED.
            error: the reason of a FAILED or KILLED run.
            hurry: a signal asked the process to stop: wait for the store a few seconds at
                most (what is not uploaded by then stays in the journal).
        """
        started = time.monotonic()
        self._stop.set()
        self._thread.join(SIGNAL_GRACE_S if hurry else None)
        self.writer.append({"type": "end", "status": status, "error": error})
        self.writer.close()
        if self._uploader is None:
            if self.unrecorded is not None:
                return Delivery(self.journal, recorded=False, reason=self.unrecorded)
            return Delivery(self.journal, recorded=False, offline=True)
        if hurry:
            deadline = started + SIGNAL_GRACE_S
        elif self._outage_since is not None:
            deadline = max(self._outage_since + self.settings.retry_s, time.monotonic())
        else:
            deadline = time.monotonic() + self.settings.retry_s
        if self._drain(deadline):
            return Delivery(self.journal, recorded=True)
        reason = (
            self._refused
            or self._lost
            or (f"the tracking store {self.tracking_uri} did not take every record in time")
        )
        return Delivery(self.journal, recorded=False, reason=reason)

    def _drain(self, deadline: float) -> bool:
        """Send everything left before ``deadline``; True when the store has it all."""
        uploader = self._uploader
        assert uploader is not None
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            first_try = True
            while self._refused is None:
                try:
                    caught_up = uploader.pump(final=True)
                    self._recovered()
                    while not caught_up:
                        if time.monotonic() > deadline:
                            return False
                        caught_up = uploader.pump(final=True)
                    return True
                except Exception as failure:  # a store error: retried, or why it gave up
                    was_lost = self._lost is not None
                    self._failed(failure)
                    if (was_lost and first_try) or self._lost is not None:
                        return False  # gone before the end, and the last try failed too
                first_try = False
                pause = min(self._backoff(), deadline - time.monotonic())
                if pause <= 0:
                    return False
                time.sleep(pause)
            return False
        finally:
            self._lock.release()

    # --- on the task's thread ---

    def _append(self, record: Mapping[str, Any]) -> None:
        self.writer.append(record)
        self._since_upload += 1
        if self._since_upload >= UPLOAD_EVERY_RECORDS or time.monotonic() >= self._upload_at:
            self._upload_some()

    def _upload_some(self) -> None:
        """Send the next chunk of the journal, unless the store is failing."""
        self._since_upload = 0
        self._upload_at = time.monotonic() + UPLOAD_EVERY_S
        if self._uploader is None or not self._healthy:
            return
        if not self._lock.acquire(blocking=False):
            return  # the heartbeat thread is sending: it will do
        try:
            # A signal must not cut a store call short (it could leave a SQLite write
            # transaction open); it is raised right after.
            with signals.deferred():
                self._uploader.pump()
        except Exception as failure:
            self._failed(failure)
        finally:
            self._lock.release()
        signals.raise_deferred()

    # --- on the heartbeat thread ---

    def _beat_loop(self) -> None:
        beat_at = time.monotonic() + self.settings.heartbeat_s
        while not self._stop.wait(min(SYNC_EVERY_S, self.settings.heartbeat_s)):
            try:
                self.writer.sync()
            except OSError:
                pass  # the disk refused; the next second tries again
            now = time.monotonic()
            if now >= beat_at:
                beat_at = now + self.settings.heartbeat_s
                try:
                    self.writer.append(
                        {"type": "tags", "tags": {liveness.HEARTBEAT_TAG: liveness.heartbeat()}}
                    )
                except OSError:
                    return  # the run is being closed
                if self._healthy:
                    self._send_from_thread()
            if not self._healthy and self._refused is None and now >= self._retry_at:
                self._send_from_thread()

    def _send_from_thread(self) -> None:
        """One chunk from the heartbeat thread: the heartbeat, or a probe of a failing store."""
        if self._uploader is None or not self._lock.acquire(blocking=False):
            return
        try:
            self._uploader.pump()
        except Exception as failure:
            self._failed(failure)
        else:
            self._recovered()
        finally:
            self._lock.release()

    # --- the store's health ---

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "the tracking store %s answers again after %.0f s; nothing was lost",
                self.tracking_uri,
                time.monotonic() - self._outage_since,
            )
        self._outage_since, self._lost, self._healthy = None, None, True

    def _failed(self, failure: Exception) -> None:
        self._healthy = False
        reason = upload.describe(failure)
        if not upload.is_transient(failure):
            self._refused = f"the tracking store {self.tracking_uri} refused a record: {reason}"
            log.error("%s; the run goes on, kept in %s", self._refused, self.journal.parent)
            return
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning(
                "the tracking store %s does not answer (%s); retrying for up to %.0f s "
                "while the task goes on",
                self.tracking_uri,
                reason,
                self.settings.retry_s,
            )
        elif self._lost is None and now - self._outage_since > self.settings.retry_s:
            self._lost = (
                f"the tracking store {self.tracking_uri} did not answer for "
                f"{self.settings.retry_s:.0f} s ({reason})"
            )
            log.warning("%s; the run goes on, kept in %s", self._lost, self.journal.parent)
        self._retry_at = now + self._backoff()

    def _backoff(self) -> float:
        if self._lost is not None:
            return self.settings.heartbeat_s  # gave up: try again now and then
        elapsed = time.monotonic() - (self._outage_since or time.monotonic())
        return min(MAX_BACKOFF_S, 0.5 + elapsed / 2)


def start(
    directory: Path,
    header: Header,
    tags: Mapping[str, str],
    tracker: Any,
    experiment_id: Optional[str],
    settings: Settings,
    unrecorded: Optional[str] = None,
) -> LiveRun:
    """Create the run in the store (unless offline) and its journal in ``directory``.

    The run is created here, synchronously, so that a store that refuses it stops the
    command at once; everything after goes through the journal.

    Args:
        directory: the run's output directory.
        header: the journal's header.
        tags: the run's first tags (sent with its creation).
        tracker: the store (``tracking.Tracker``), or None to keep the run offline.
        experiment_id: the experiment to create the run in (None when offline).
        settings: retry and heartbeat settings.
        unrecorded: why a run meant for a store is kept in its journal only (the store did
            not answer when a job of a sweep started).
    """
    path = journal.new_path(directory)
    earlier = _earlier_attempt(Path(directory), header)
    if earlier is not None:
        tags = {**tags, RETRY_OF_TAG: earlier}
    tags = {
        **tags,
        **liveness.identity_tags(),
        liveness.HEARTBEAT_TAG: liveness.heartbeat(),
        upload.JOURNAL_ID_TAG: header.journal_id,
        liveness.OUTPUT_DIR_TAG: str(Path(directory).resolve()),
    }
    run_id = None
    if tracker is not None:
        run_id = tracker.create_run(experiment_id, header.run_name, tags)
    writer = Writer(path, header)
    if run_id is not None:
        writer.append({"type": "run", "run_id": run_id, "experiment_id": experiment_id})
    writer.append({"type": "tags", "tags": tags})
    client = tracker.client if tracker is not None else None
    return LiveRun(writer, client, header.tracking_uri, run_id, experiment_id, settings, unrecorded)


def _earlier_attempt(directory: Path, header: Header) -> Optional[str]:
    """The run of an earlier attempt at the same config in this directory, if any.

    A requeued Slurm job runs again in its own directory: it records a fresh run, and this
    links it to the attempt before.
    """
    earlier = None
    for path in sorted(directory.glob("journal*.jsonl"), key=lambda p: p.stat().st_mtime):
        try:
            if journal.read_header(path).config_hash != header.config_hash:
                continue
        except journal.JournalError:
            continue
        run = next((r for r in journal.records(path) if r.get("type") == "run"), None)
        state = upload.State.load(path, header.tracking_uri)
        earlier = (run or {}).get("run_id") or state.run_id or earlier
    return earlier
