"""The recording process's loop: requests in, store calls out, one thread for the store.

The process reads requests from its standard input (JSON lines, see ``record.client``) on a
thread of its own and does everything else on its main thread, one step at a time: it
answers requests, then sends the next chunk of each journal it watches (:mod:`.watch`), sets
heartbeats, makes journals durable and draws their figures (:mod:`.figures`); when there is
nothing to send it waits for a request or for a tenth of a second. One thread talks to the
store, so no call ever races another. When its standard input closes without a goodbye,
the process it served is gone: it uploads what that process's journals hold, closes their
runs (FAILED, lost, with the reason), and leaves.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Optional

from experiments import process
from experiments.errors import ConfigError, TrackingError
from experiments.record import journal, liveness
from experiments.record.marks import State
from experiments.record.service import figures
from experiments.record.service.watch import Watch, fsync_if_grown
from experiments.record.store import upload
from experiments.record.store.failures import describe, is_transient
from experiments.record.store.tracker import finished_run
from experiments.record.store.upload import Uploader, journals_of

log = logging.getLogger("experiments.recorder")

IDLE_WAIT_S = 0.1  # how long the loop waits for a request when nothing is left to send
SYNC_EVERY_S = 1.0  # how often a growing journal is made durable (fsync)
UPLOAD_EVERY_S = 1.0  # a running journal is sent at most this often: one transaction each
HURRY_S = 5.0  # after a signal, how long a run's last upload may take (unless it says)
MAX_PAUSE_S = 300.0  # a pause (a timed region of a task) ends by itself after this long


class Service:
    """The recording process: serves one client over a pair of pipes."""

    def __init__(self, channel: BinaryIO, served: Optional[int] = None) -> None:
        self.channel = channel
        # The process served: when it is gone, this one is another's child. Its standard
        # input may then stay open (a process it forked holds the pipe), so it is looked at.
        self.served = served if served is not None else os.getppid()
        self.channel_lock = threading.Lock()
        self.requests: queue.Queue[Optional[dict[str, Any]]] = queue.Queue()
        self.watches: dict[str, Watch] = {}
        self.stores: dict[tuple[str, float], Any] = {}
        self.paused_until = 0.0
        self.parent_gone = False
        self.leaving = False
        self.figures: list[tuple[Path, bytes]] = []  # sent by the run, drawn when not quiet

    # --- the loop ---

    def serve(self, requests: BinaryIO) -> None:
        threading.Thread(target=self._read, args=(requests,), daemon=True).start()
        while True:
            busy = False
            if time.monotonic() >= self.paused_until:
                self._draw_figures()  # before the uploads, which wait for them
                busy = any([self._step(watch) for watch in list(self.watches.values())])
            try:
                message = self.requests.get(timeout=0 if busy else IDLE_WAIT_S)
            except queue.Empty:
                message = None
                if not (self.parent_gone or self.leaving) and os.getppid() != self.served:
                    message = {"op": "gone"}  # died, its pipe held open by a child of its own
                if message is None and not (self.parent_gone or self.leaving):
                    continue
            if message is not None:
                self._handle(message)
            while not self.requests.empty():
                queued = self.requests.get_nowait()
                if queued is not None:
                    self._handle(queued)
            if (self.parent_gone or self.leaving) and not self.watches:
                return

    def _draw_figures(self) -> None:
        while self.figures:
            figures.draw(*self.figures.pop(0))

    def _read(self, stream: BinaryIO) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "bye":
                self.leaving = True
            self.requests.put(message)
        self.requests.put({"op": "gone"})

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._reply(message, ok=False, kind="ProtocolError", error=f"unknown request {op!r}")
            return
        try:
            handler(message)
        except (ConfigError, TrackingError) as error:
            self._reply(message, ok=False, kind=type(error).__name__, error=str(error))
        except Exception as error:  # the store failed in a way nothing above expected
            kind = "StoreUnreachable" if is_transient(error) else "TrackingError"
            self._reply(message, ok=False, kind=kind, error=describe(error))

    def _reply(self, message: dict[str, Any], **fields: Any) -> None:
        if "id" in message:
            self.send({"id": message["id"], **fields})

    def send(self, payload: dict[str, Any]) -> None:
        data = (json.dumps(payload) + "\n").encode()
        with self.channel_lock:
            try:
                self.channel.write(data)
                self.channel.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the client is gone; the watchdog takes it from here

    # --- requests ---

    def _op_start(self, message: dict[str, Any]) -> None:
        """Open the store; skip a finished config, or create the run (or reopen the one it
        continues) and watch its journal."""
        tracker = self._store(message)
        experiment_id = tracker.experiment_id(message["experiment"])
        skip = message.get("skip")
        run = message["run"]
        reopen, drain, checkpoint = run.get("reopen"), list(run.get("drain") or []), None
        if skip is not None:
            found = _finished_run(tracker, experiment_id, skip["config_hash"], skip.get("key"))
            if found is not None:
                self._reply(message, ok=True, skipped=found, experiment_id=experiment_id)
                return
            resumable = tracker.resumable_run(experiment_id, skip["config_hash"])
            if resumable is not None and reopen is None:  # continue it, from its checkpoint
                reopen, checkpoint = resumable["run_id"], resumable["checkpoint"]
                drain += journals_of(resumable["output_dir"], reopen, tracker.key)
        resumed = None
        if reopen is not None:
            for path in drain:  # what its earlier attempts recorded goes in first
                upload.drain(tracker.client, Path(path), tracker.key, tracker.bulk)
            resumed = tracker.reopen_run(reopen, run["tags"])
            resumed["checkpoint"] = checkpoint
            run_id = reopen
        else:
            run_id = tracker.create_run(experiment_id, run["name"], run["tags"])
        self._reply(message, ok=True, run_id=run_id, experiment_id=experiment_id, resumed=resumed)
        path = Path(run["journal"])
        state = State(tracker.key, run_id, experiment_id, offset=int(run["offset"]))
        state.save(path)
        self._watch(path, state, tracker, run, repair=False)
        tracker.close_lost_runs(experiment_id, float(message.get("lost_after_s", 300)))

    def _op_finish(self, message: dict[str, Any]) -> None:
        """Reply once the journal (its end written) is in the store, or cannot be."""
        watch = self.watches.get(message["journal"])
        if watch is None:
            self._reply(message, ok=True, recorded=False, reason="no upload for this journal")
            return
        watch.finish_id = message["id"]
        now = time.monotonic()
        if message.get("hurry"):
            watch.deadline = now + float(message.get("hurry_s", HURRY_S))
            watch.deadline_by = "tracking.stop_wait_s"
        elif watch.outage_since is not None:
            watch.deadline = max(watch.outage_since + watch.retry_s, now)
        else:
            watch.deadline = now + watch.retry_s
        watch.retry_at = 0.0  # one prompt try at the end, always

    def _op_adopt(self, message: dict[str, Any]) -> None:
        """Upload a journal whose writer is gone and end its run with ``close``."""
        tracker = self._store(message)
        path = Path(message["journal"])
        state = State.load(path, tracker.key)
        run = {"retry_s": message.get("retry_s", 60.0), "heartbeat_s": 3600.0, "pid": 0}
        watch = self._watch(path, state, tracker, run, repair=True)
        watch.writer_gone = True
        status, reason = message["close"]
        watch.close_as = (status, reason)
        watch.finish_id = message["id"]
        watch.deadline = time.monotonic() + float(run["retry_s"])

    def _op_call(self, message: dict[str, Any]) -> None:
        """Call a function of this package with a client on the store (see ``live.call``).

        What a part above the record path has done where MLflow is loaded (a sweep's
        report) comes as a name, ``"module:function"``, and JSON arguments; only functions
        of this package are called.
        """
        started = time.monotonic()
        module_name, _, name = str(message["function"]).partition(":")
        if not module_name.startswith("experiments.") or not name.isidentifier():
            raise TrackingError(f"not a function of this package: {message['function']!r}")
        function = getattr(importlib.import_module(module_name), name)
        tracker = self._store(message)
        reply = function(tracker.client, **message.get("arguments", {}))
        self._reply(message, ok=True, seconds=round(time.monotonic() - started, 3), **reply)

    def _op_pause(self, message: dict[str, Any]) -> None:
        """Stop all work (a task is timing something) until resumed; reply when idle."""
        self.paused_until = time.monotonic() + min(float(message.get("s", 60)), MAX_PAUSE_S)
        self._reply(message, ok=True)

    def _op_resume(self, message: dict[str, Any]) -> None:
        self.paused_until = 0.0
        self._reply(message, ok=True)

    def _op_bye(self, message: dict[str, Any]) -> None:
        """The process served is leaving; a run it never ended is closed as lost."""
        self._reply(message, ok=True, pending=len(self.watches))
        for watch in self.watches.values():
            if watch.finish_id is None:
                self._abandoned(watch, "exited without closing the run")

    def _abandoned(self, watch: Watch, how: str) -> None:
        """Upload what a journal holds and end its run, its writer being gone."""
        watch.writer_gone = True
        watch.retry_at = 0.0
        if watch.deadline is None:
            watch.deadline = time.monotonic() + watch.retry_s
        if not journal.ended(watch.path):
            header = watch.uploader.header
            last = (journal.last_record(watch.path) or {}).get("time", header.time)
            watch.close_as = (
                "FAILED",
                f"{liveness.LOST_PREFIX} process {header.pid} on {header.host} {how}; its last "
                f"record {liveness.heartbeat(last)}",
            )

    def _op_figure(self, message: dict[str, Any]) -> None:
        """Draw a figure the process served sent over its pipe into the run's file.

        Store or no store: a run whose store is gone still gets its pictures. The pickle
        comes from the process that started this one, never from a file.
        """
        self.figures.append((Path(message["file"]), base64.b64decode(message["pickle"])))

    def _op_gone(self, message: dict[str, Any]) -> None:
        """Standard input closed. Without a goodbye, the process served is gone."""
        if self.leaving:
            return
        self.parent_gone = True
        self.paused_until = 0.0
        for watch in self.watches.values():
            self._abandoned(watch, "died without closing the run (killed, or out of memory?)")

    # --- stores and journals ---

    def _store(self, message: dict[str, Any]) -> Any:
        from experiments.record.store.tracker import Tracker

        process.adopt_mlflow_settings(message.get("env", {}))
        uri, timeout_s = message["uri"], float(message.get("timeout_s", 10.0))
        if uri.startswith(("http://", "https://")):
            process.bound_mlflow_http(timeout_s)  # this process lives as long as its command
        key = (uri, timeout_s)
        if key not in self.stores:
            self.stores[key] = Tracker(uri, timeout_s, source=message.get("source"))
        return self.stores[key]

    def _watch(self, path: Path, state: State, tracker: Any, run: dict, repair: bool) -> Watch:
        # Only the live run this process serves sends figures (over the pipe); an adopted
        # journal's figures were never sent, and are missing artifacts.
        uploader = Uploader(
            tracker.client, path, state, repair=repair, bulk=tracker.bulk, figures=not repair
        )
        now = time.monotonic()
        watch = Watch(
            path=path,
            uploader=uploader,
            tracker=tracker,
            retry_s=float(run.get("retry_s", 60.0)),
            heartbeat_s=float(run.get("heartbeat_s", 30.0)),
            writer_pid=int(run.get("pid", 0)),
            beat_at=now + float(run.get("heartbeat_s", 30.0)),
            sync_at=now + SYNC_EVERY_S,
        )
        self.watches[str(path)] = watch
        return watch

    def _step(self, watch: Watch) -> bool:
        """One step of one journal; True when it has more to send right away."""
        now = time.monotonic()
        if now >= watch.sync_at:
            watch.sync_at = now + SYNC_EVERY_S
            watch.synced_size = fsync_if_grown(watch.path, watch.synced_size)
        if now >= watch.beat_at and not watch.writer_gone and watch.finish_id is None:
            watch.beat_at = now + watch.heartbeat_s
            self._beat(watch)
        if watch.refused is not None or (watch.deadline is not None and now > watch.deadline):
            if watch.finish_id is not None or watch.writer_gone:
                self._complete(watch, recorded=False)
            return False
        final = watch.writer_gone or watch.finish_id is not None
        if now < watch.retry_at or (now < watch.upload_at and not final):
            return False
        try:
            caught_up = watch.uploader.pump(final=final)
            if caught_up and watch.close_as is not None and not watch.uploader.state.ended:
                status, reason = watch.close_as
                last = (journal.last_record(watch.path) or {}).get("time")
                watch.uploader.close(status, reason, int(last or time.time() * 1000))
        except Exception as failure:  # a store error: retried, or the reason it gave up
            watch.failed(failure)
            if watch.lost is not None and watch.finish_id is not None:
                self._complete(watch, recorded=False)
            return False
        watch.recovered()
        if caught_up and final and watch.uploader.state.ended:
            self._complete(watch, recorded=True)
            return False
        if caught_up:
            watch.upload_at = time.monotonic() + UPLOAD_EVERY_S
        return not caught_up

    def _beat(self, watch: Watch) -> None:
        run_id = watch.uploader.run_id
        if run_id is None:
            return
        try:
            watch.tracker.client.set_tag(run_id, liveness.HEARTBEAT_TAG, liveness.heartbeat())
        except Exception as failure:
            watch.failed(failure)

    def _complete(self, watch: Watch, recorded: bool) -> None:
        # Whatever became of its upload (a store gone past the retry window, a refusal),
        # the run's pictures were drawn as they came (_op_figure): a later sync uploads them.
        watch.done = True
        self.watches.pop(str(watch.path), None)
        if watch.finish_id is None:
            return
        reason = None
        if not recorded:
            reason = (
                watch.refused
                or watch.lost
                or (
                    f"the tracking store {watch.tracker.key} did not take every record in "
                    f"time ({watch.deadline_by})"
                )
            )
        counts = watch.uploader.counts
        self.send(
            {
                "id": watch.finish_id,
                "ok": True,
                "recorded": recorded,
                "reason": reason,
                "run_id": watch.uploader.run_id,
                "points": counts.points,
            }
        )


def _finished_run(
    tracker: Any, experiment_id: str, identity: str, objective_key: Optional[str]
) -> Optional[dict[str, Any]]:
    """The newest FINISHED run with this config hash, for ``skip_existing``."""
    from mlflow.exceptions import MlflowException

    try:
        return finished_run(tracker.client, experiment_id, identity, objective_key)
    except MlflowException as error:
        if not is_transient(error):
            raise
        raise tracker.unreachable(error) from error
