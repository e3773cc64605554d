"""The one place that handles signals: SIGINT, SIGTERM and SIGHUP end a run KILLED.

While :func:`handling` is active, each of those signals raises :class:`Interrupted` (a
``KeyboardInterrupt``, so every ``finally`` and every handler of Ctrl-C already deals
with it) in the main thread; the run that it passes through ends KILLED with the signal
named in its ``error`` tag, and the command exits with 128 + the signal's number (130,
143, 129). The handler itself only records the signal and raises. While a run is being
closed (:func:`deferred`), a signal is recorded but not raised, so the closing finishes.

A task that checks for a stop (``ctx.stop_requested``, :func:`stop_requested`) is told of
the first signal instead: it is recorded, not raised, and the task stops at its next step
boundary (``ctx.stop()``, :func:`stop_now`, raises it then), saving what it needs first. A
second signal is raised at once, wherever the task is. The run ends KILLED either way.

Under submitit on Slurm, SIGUSR2 comes before the time limit or on preemption; submitit's
own handler for it is kept and called (it requeues the job and exits, or gives up), after
the reason is recorded, so the run still ends KILLED, naming the time limit or the
preemption, and whether submitit requeued the job. The SIGTERM with which Slurm then ends
the job is recorded, not raised, so the run's closing goes on. A signal the process
ignores (``nohup``, a worker pool ignoring SIGINT) stays ignored. The previous handlers
come back when :func:`handling` ends.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop.

    Attributes:
        signum: the signal's number.
        reason: what the run's ``error`` tag says, e.g. ``terminated (SIGTERM)``.
    """

    def __init__(self, signum: int, reason: str) -> None:
        super().__init__(reason)
        self.signum = signum
        self.reason = reason

    @property
    def exit_status(self) -> int:
        """The conventional exit status: 128 + the signal's number."""
        return 128 + self.signum


class _State:
    depth = 0
    previous: dict[int, Any] = {}
    received: Optional[tuple[int, str]] = None
    raised = False
    deferring = 0
    polling = False  # a task in this block may check for a stop (task_checks)
    polled = False  # and has: the first signal waits for its next step boundary
    then: Optional[Callable[[], None]] = None  # what that signal does once the task stops


def describe(signum: int) -> str:
    """Why a run stopped, in words, for a signal."""
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        return "interrupted (SIGINT, Ctrl-C)"
    if signum == signal.SIGHUP:
        return "hung up (SIGHUP: the terminal or session closed)"
    if signum == signal.SIGTERM and os.environ.get("SLURM_JOB_ID"):
        end = os.environ.get("SLURM_JOB_END_TIME", "")
        if end.isdigit() and time.time() >= int(end) - 5:
            return "Slurm time limit reached (SIGTERM)"
        return "terminated by Slurm (SIGTERM: scancel, the time limit or preemption)"
    if signum == signal.SIGTERM:
        return "terminated (SIGTERM)"
    return f"stopped by {name}"


@contextmanager
def handling() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` until the block ends.

    Nested uses share the outermost one, which raises, as it ends, a signal recorded while
    deferred that nothing inside raised (:func:`raise_deferred`). Outside the main thread
    (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _State.depth == 0:
        _install()
    _State.depth += 1
    try:
        yield
    except BaseException:
        _leave()
        raise
    _leave()
    # The outermost block: a signal recorded while deferred and raised by nobody inside
    # (a run that closed FINISHED, called outside the command line) stops the caller here.
    if _State.depth == 0 and _State.received is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(*_State.received)


def _leave() -> None:
    _State.depth -= 1
    if _State.depth == 0:
        _restore()


@contextmanager
def deferred() -> Iterator[None]:
    """While closing a run: a signal is recorded (see :func:`received`), not raised."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1


@contextmanager
def task_checks() -> Iterator[None]:
    """While a task runs: it may ask :func:`stop_requested`, after which the first signal
    waits for it (see the module)."""
    _State.polling, _State.polled, _State.then = True, False, None
    try:
        yield
    finally:
        _State.polling = _State.polled = False
        _State.then = None


def stop_requested() -> bool:
    """Whether a signal asked the run to stop; from the first call on (inside
    :func:`task_checks`), the first signal is left for the task to act on."""
    if _State.polling:
        _State.polled = True
    return _State.received is not None


def stop_now() -> None:
    """Raise :class:`Interrupted` for the signal that asked the run to stop (none: nothing);
    for Slurm's warning under submitit, let submitit requeue the job first (see the
    module)."""
    if _State.received is None:
        return
    then, _State.then = _State.then, None
    _State.raised = True
    if then is not None:
        then()  # raises: SystemExit (requeued), or Interrupted (not)
    raise Interrupted(*_State.received)


def received() -> Optional[tuple[int, str]]:
    """The first signal received since :func:`handling` began, and its reason; or None."""
    return _State.received


def raise_deferred() -> None:
    """Raise :class:`Interrupted` for a signal that came while a run was opened or closed
    (or that a task checking for a stop did not act on)."""
    if _State.received is not None and not _State.raised and _State.depth:
        stop_now()


def raise_swallowed() -> None:
    """Raise :class:`Interrupted` again for a signal whose first one never got through.

    Python runs a signal's handler between two bytecodes of the main thread wherever it is,
    also inside a weakref callback or a ``__del__`` (an import's module-lock clean-up is
    one), where an exception is printed as "Exception ignored" and dropped. A run that gets
    to its end with a signal received and raised lost it that way: it ends as the signal
    asked, not FINISHED.
    """
    if _State.received is not None and _State.raised and _State.depth:
        raise Interrupted(*_State.received)


def stop_reason(error: BaseException) -> Optional[str]:
    """The reason a run ended KILLED when ``error`` ends it; None when it is a failure."""
    if isinstance(error, Interrupted):
        return error.reason
    if _State.received is not None:
        return _State.received[1]
    if isinstance(error, KeyboardInterrupt):
        return describe(signal.SIGINT)
    return None


def _install() -> None:
    _State.received, _State.raised, _State.previous = None, False, {}
    for signum in HANDLED:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue
        _State.previous[signum] = previous
        signal.signal(signum, _handle)
    usr2 = getattr(signal, "SIGUSR2", None)
    if usr2 is not None and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        previous = signal.getsignal(usr2)
        if callable(previous):
            _State.previous[usr2] = previous
            signal.signal(usr2, _chained(previous))


def _restore() -> None:
    for signum, previous in _State.previous.items():
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    _State.previous = {}


def _handle(signum: int, frame: Any) -> None:
    reason = describe(signum)
    first = _State.received is None
    if first:
        _State.received = (signum, reason)
    if _State.raised or _State.deferring:
        return
    if first and _State.polled:
        return  # the task checks: it stops at its next step boundary
    _State.raised = True
    raise Interrupted(signum, reason)


def _chained(previous: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
    """SIGUSR2 under submitit: record why, then let submitit requeue or give up."""

    def handle(signum: int, frame: Any) -> None:
        owner = getattr(previous, "__self__", None)
        timed_out = owner.has_timed_out() if hasattr(owner, "has_timed_out") else None
        cause = {True: "Slurm time limit near", False: "preempted by Slurm"}.get(
            timed_out, "Slurm time limit or preemption"
        )
        first = _State.received is None
        _State.received = (signum, f"{cause} (SIGUSR2)")
        if first and _State.polled and not (_State.raised or _State.deferring):
            # The task checks for a stop: it saves at its step boundary, then submitit
            # requeues the job (stop_now), so the requeued job continues from there.
            _State.then = lambda: requeue(signum, frame, cause)
            return
        requeue(signum, frame, cause)

    def requeue(signum: int, frame: Any, cause: str) -> None:
        try:
            # Requeueing, Slurm ends the job with SIGTERM while submitit's `scontrol requeue`
            # still runs: recorded, not raised, so the run says it was requeued.
            with deferred():
                previous(signum, frame)
        except SystemExit:
            _State.received = (signum, f"{cause} (SIGUSR2); submitit requeued the job")
            _State.raised = True  # Slurm's SIGTERM that ends the requeued job comes next
            raise
        except Exception as error:
            # Raised as Interrupted: no ``except Exception`` on the way can swallow it.
            _State.received = (signum, f"{cause} (SIGUSR2); not requeued: {error}")
            _State.raised = True
            raise Interrupted(*_State.received) from error

    return handle
