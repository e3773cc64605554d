"""The run's side of the recording process: start it, ask it things, hear from it.

Requests and replies are JSON lines over the process's standard input and output:
``{"id": 3, "op": "start", ...}`` is answered by ``{"id": 3, "ok": true, ...}`` or
``{"id": 3, "ok": false, "kind": "StoreUnreachable", "error": "..."}``; the process also
sends events (``{"event": "log", "level": "WARNING", "message": "..."}``), which are logged
here. One thread writes the requests and another reads the replies, so a request is sent
without waiting (a figure larger than the pipe holds included) and its answer collected
later (:meth:`Recorder.request`). Nothing here imports MLflow.

If the recording process ends unexpectedly, every request fails with
:class:`RecorderGone`; the runs it was uploading stay in their journals, and the next run
of this process starts a new one. So does one that does not answer within the bound the
run's settings give (stopped, or stuck): the run gives up on it and ends it
(:meth:`Pending.result` with ``give_up``), so that it is not left behind holding what
``python -m experiments.sync`` then needs (a SQLite store's write lock).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Callable, Optional

from experiments import errors, signals

log = logging.getLogger("experiments.recorder")


class RecorderGone(RuntimeError):
    """The recording process ended before it answered."""


class Pending:
    """The answer to one request, once it comes.

    Args:
        silent: called with the reason when a wait that gives up (``result(give_up=True)``)
            saw no answer: it ends the recording process.
    """

    def __init__(self, silent: Optional[Callable[[str], None]] = None) -> None:
        self._event = threading.Event()
        self._reply: Optional[dict[str, Any]] = None
        self._failure: Optional[BaseException] = None
        self._silent = silent

    def set(self, reply: Optional[dict[str, Any]], failure: Optional[BaseException]) -> None:
        self._reply, self._failure = reply, failure
        self._event.set()

    def result(
        self, timeout: Optional[float] = None, give_up: bool = False, bound: Optional[str] = None
    ) -> dict[str, Any]:
        """The reply; raises what the recording process reported, or :class:`RecorderGone`.

        Args:
            timeout: how long to wait (None: until it comes or the process ends).
            give_up: ``timeout`` is the longest the run waits for the recording process at
                all (the bound its settings give, ``live.answer_within``): past it the
                process is taken for stopped or stuck and ended, and every request waiting
                on it fails. A shorter wait (after a signal) leaves it to finish alone.
            bound: the settings ``timeout`` comes from, named when the wait ends unanswered.
        """
        if not self._event.wait(timeout):
            reason = f"did not answer within {timeout:.0f} s"
            if bound is not None:
                reason += f" ({bound})"
            if give_up and self._silent is not None:
                self._silent(reason)
                self._event.wait()  # set at once: ended, with the process's pid named
            else:
                raise RecorderGone(f"the recording process {reason}")
        if self._failure is not None:
            raise self._failure
        assert self._reply is not None
        if not self._reply.get("ok", False):
            raise _error(self._reply)
        return self._reply


def service_signals() -> set[signal.Signals]:
    """The signals meant for the run's process, which its recording process ignores."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    return {getattr(signal, name) for name in names if hasattr(signal, name)}


class Recorder:
    """A recording process serving this process (see :mod:`experiments.record.service`)."""

    def __init__(self) -> None:
        # The signals meant for this process are blocked while the recording process is
        # started: it inherits the mask through exec, so one sent to it (a Ctrl-C to the
        # process group, Slurm's to the job) before it ignores them is never acted on. This
        # thread gets any of its own once unblocked, a moment later.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, service_signals())
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "experiments.record.service", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin: IO[bytes] = self.process.stdin
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._used = False
        self.gone: Optional[str] = None
        # Requests in the order made; None closes the pipe. A write waits while the pipe is
        # full (a figure sent to a busy process, or one that is stopped): the writer waits,
        # never the run.
        self._outbox: queue.SimpleQueue[Optional[bytes]] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="recorder requests", daemon=True)
        self._writer.start()
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="recorder replies", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, op: str, **fields: Any) -> Pending:
        """Send a request now; collect its answer later with ``.result()``."""
        pending = Pending(self.end)
        self._used = True
        with self._lock:
            if self.gone is not None:
                pending.set(None, RecorderGone(self.gone))
                return pending
            number = next(self._ids)
            self._pending[number] = pending
            self._outbox.put((json.dumps({"id": number, "op": op, **fields}) + "\n").encode())
        return pending

    def call(
        self,
        op: str,
        timeout: Optional[float] = None,
        give_up: bool = False,
        bound: Optional[str] = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send a request and wait for its answer (see :meth:`Pending.result`)."""
        return self.request(op, **fields).result(timeout, give_up, bound)

    def close(self, timeout: float = 120.0) -> None:
        """Say goodbye and wait (up to ``timeout``) for the process to finish and exit.

        A process still uploading after that goes on alone: it ignores the signals that
        stop this one, finishes what the journals hold and exits.
        """
        if not self._used:  # started early for nothing (a bad setting): no need to wait
            self.process.kill()
            self.process.wait()
            return
        if self.gone is None:
            try:
                self.call("bye", timeout=timeout)
            except (RecorderGone, errors.RunFailure):
                pass
            self._outbox.put(None)  # then the pipe closes
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.info("the recording process (pid %s) finishes its uploads alone", self.pid)

    def end(self, reason: str) -> None:
        """Give up on the recording process (``reason``: what it did not do) and end it.

        It is killed (SIGKILL ends a stopped process too), and every request waiting on it
        fails with :class:`RecorderGone`; its runs stay in their journals.
        """
        with self._lock:
            if self.gone is None:
                self.gone = f"the recording process (pid {self.pid}) {reason} and was ended"
            gone, waiting, self._pending = self.gone, list(self._pending.values()), {}
        self.process.kill()
        for pending in waiting:
            pending.set(None, RecorderGone(gone))

    def _write(self) -> None:
        while True:
            line = self._outbox.get()
            try:
                if line is None:
                    self._stdin.close()
                    return
                self._stdin.write(line)
                self._stdin.flush()
            except (OSError, ValueError):  # it ended: the reader says so, and how
                return

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "event" in message:
                self._event(message)
                continue
            with self._lock:
                pending = self._pending.pop(message.get("id"), None)
            if pending is not None:
                pending.set(message, None)
        reason = self._gone_reason()
        with self._lock:
            self.gone = self.gone or reason  # given up on (:meth:`end`): that reason stands
            waiting, self._pending = list(self._pending.values()), {}
        for pending in waiting:
            pending.set(None, RecorderGone(self.gone))
        self._ready.set()

    def _event(self, message: dict[str, Any]) -> None:
        if message["event"] == "ready":
            self._ready.set()
        elif message["event"] == "log":
            level = logging.getLevelName(message.get("level", "WARNING"))
            log.log(level if isinstance(level, int) else logging.WARNING, message["message"])

    def _gone_reason(self) -> str:
        code = self.process.poll()
        if code is None:
            try:
                code = self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
        how = f" (exit status {code})" if code is not None else ""
        return f"the recording process (pid {self.process.pid}) ended unexpectedly{how}"


def _error(reply: dict[str, Any]) -> Exception:
    kinds = {
        "ConfigError": errors.ConfigError,
        "StoreUnreachable": errors.StoreUnreachable,
        "TrackingError": errors.TrackingError,
    }
    return kinds.get(reply.get("kind", ""), errors.TrackingError)(reply.get("error", "failed"))


_current: Optional[Recorder] = None
_current_lock = threading.Lock()


def get() -> Recorder:
    """This process's recording process, started if there is none (or it ended)."""
    global _current
    with _current_lock:
        if _current is None or _current.gone is not None:
            _current = Recorder()
        return _current


def start_early() -> None:
    """Start the recording process now, while this process goes on importing torch."""
    get()


SIGNALLED_EXIT_WAIT_S = 2.0


def shutdown() -> None:
    """End this process's recording process, after it finished every upload.

    After a signal, this process does not wait long: its runs already waited (briefly) for
    their last records, and what is left the recording process finishes alone.
    """
    global _current
    with _current_lock:
        current, _current = _current, None
    if current is not None:
        current.close(timeout=120.0 if signals.received() is None else SIGNALLED_EXIT_WAIT_S)


atexit.register(shutdown)
