"""A run while it executes, on its own process's side: its journal and its recording process.

:func:`open_run` writes the journal's first lines and asks the recording process
(:mod:`.service`, through :mod:`.client`) to create the run, without waiting;
:meth:`LiveRun.started` collects the answer once the run's process has done its own
start-up. From then on the task's records go to the journal only (one ``write`` each) and
the recording process uploads them as they come; :meth:`LiveRun.close` writes the end and
waits until the recording process says everything is in the store, or why not.

Nothing here imports MLflow.
"""

from __future__ import annotations

import base64
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from experiments import process
from experiments.errors import ConfigError, StoreUnreachable, TrackingError
from experiments.names import JOURNAL_ID_TAG
from experiments.record import client, journal, liveness, marks, pictures
from experiments.record.journal import Header, Writer
from experiments.record.recorder import JournalRecorder

RETRY_OF_TAG = "retry_of"  # a job run again in its directory (a requeued Slurm job)
QUIET_LIMIT_S = 300.0  # the longest a task may keep the recording process idle
# After a signal, the longest the run's process waits for its recording process
# (tracking.stop_wait_s): to learn the run's id, then to hear that the last records are in.
# What is not confirmed by then is the recording process's to finish, after this one exits.
STOP_WAIT_S = 8.0
# Of that wait, what the recording process keeps for its answer to come back: it tries to
# upload the last records for the rest (at least half of it; 5 s by default).
STOP_REPLY_S = 3.0
# Beyond the store's own bounds (a request's timeout, the retry window), how long a run waits
# for the recording process before it says it did not answer (tracking.recorder_wait_s).
ANSWER_SLACK_S = 60.0
# The settings that bound each wait, named where a wait ends without an answer.
ANSWER_BOUND = "tracking.retry_s + tracking.timeout_s + tracking.recorder_wait_s"
STOP_BOUND = "tracking.stop_wait_s"


def answer_within(settings: Settings, store: Store) -> float:
    """How long a run waits for an answer of the recording process: bounded by its settings.

    The recording process answers within the retry window (``tracking.retry_s``) plus one
    request in flight (``tracking.timeout_s``); past that and its own time to answer
    (``tracking.recorder_wait_s``, a minute), the run says that it did not answer, ends it,
    and keeps its records in its journal.
    """
    return settings.retry_s + store.timeout_s + settings.recorder_wait_s


def upload_after_signal(stop_wait_s: float) -> float:
    """How long the recording process tries to upload a run's last records after a signal:
    the run's wait (``tracking.stop_wait_s``) less the time its answer takes to come back."""
    return max(stop_wait_s - STOP_REPLY_S, stop_wait_s / 2)


@dataclass
class Settings:
    """How a live run talks to its store (``tracking.*``)."""

    retry_s: float = 60.0
    heartbeat_s: float = 30.0
    lost_after_s: float = 300.0
    recorder_wait_s: float = ANSWER_SLACK_S
    stop_wait_s: float = STOP_WAIT_S


@dataclass
class Store:
    """The store a run goes to: resolved here, opened by the recording process."""

    uri: str  # absolute; may hold a password (never written to the journal)
    source: str  # the setting it came from, for error messages
    timeout_s: float = 10.0


ANSWER_WAIT_S = Settings.retry_s + Store.timeout_s + ANSWER_SLACK_S  # answer_within, defaults


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


class PendingDelivery:
    """A run's end, sent to the recording process; :meth:`wait` says how it fared."""

    def __init__(
        self, journal: Path, pending: client.Pending, wait_s: float = ANSWER_WAIT_S
    ) -> None:
        self.journal = journal
        self._pending = pending
        self.wait_s = wait_s  # the longest wait for the answer (answer_within)

    def wait(self, timeout: Optional[float] = None) -> Delivery:
        """How the delivery fared; not answered within ``timeout`` (after a signal: the
        run's ``tracking.stop_wait_s``) counts as not recorded, with the reason. By default
        the wait is the bound that the run's settings give, and a recording process silent
        that long is ended (:meth:`client.Pending.result`)."""
        try:
            reply = self._pending.result(
                self.wait_s if timeout is None else timeout,
                give_up=timeout is None,
                bound=ANSWER_BOUND if timeout is None else STOP_BOUND,
            )
        except (client.RecorderGone, TrackingError) as failure:
            return Delivery(self.journal, recorded=False, reason=str(failure))
        return Delivery(self.journal, recorded=reply["recorded"], reason=reply.get("reason"))


class LiveRun:
    """Records one run: the journal now, the store through the recording process.

    Use :func:`open_run` to create one, :meth:`started` before the task runs, and
    :meth:`close` to end it.
    """

    def __init__(
        self,
        writer: Writer,
        service: Optional[client.Recorder],
        pending: Optional[client.Pending] = None,
        unrecorded: Optional[str] = None,
        wait_s: float = ANSWER_WAIT_S,
        stop_wait_s: float = STOP_WAIT_S,
    ) -> None:
        self.writer = writer
        self.service = service
        self.wait_s = wait_s  # the longest wait for the recording process (answer_within)
        self.stop_wait_s = stop_wait_s  # the same after a signal (tracking.stop_wait_s)
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.resumed: Optional[dict[str, Any]] = None  # a run reopened: the store's answer
        self.unrecorded = unrecorded
        self.discarded = False  # refused or skipped before it began: nothing to close
        self._pending = pending
        self.recorder = JournalRecorder(
            writer,
            writer.path.parent,
            self.quiet,
            send_figure=self._send_figure if service is not None else None,
        )

    @property
    def journal(self) -> Path:
        return self.writer.path

    def _send_figure(self, figure: Any, path: Path) -> bool:
        """Hand a figure to the recording process to draw into ``path``; False if it is gone,
        or the figure is not matplotlib's alone (see ``record.pictures``): then the run's
        process draws it.

        The figure travels pickled over this process's own pipe: the recording process reads
        no pickle from anywhere else.
        """
        if self.service is None or self.service.gone is not None:
            return False
        data = pictures.pickled(figure)
        if data is None:
            return False
        self.service.request(
            "figure", file=str(path.resolve()), pickle=base64.b64encode(data).decode("ascii")
        )
        return True

    def started(
        self, fallback: bool = False, timeout: Optional[float] = None
    ) -> Optional[dict[str, Any]]:
        """Wait for the store to have created the run (the recording process's answer).

        Args:
            fallback: a store that does not answer keeps this run in its journal (a job of
                a sweep goes on) instead of stopping it.
            timeout: give up waiting after this long (then as if the store did not answer),
                after a signal (the run's ``tracking.stop_wait_s``); by default the bound
                that the run's settings give, past which the recording process is ended
                (:meth:`client.Pending.result`).

        Returns:
            None, or ``{"run_id": ..., "objective": ...}`` when ``skip_existing`` found this
            config already FINISHED: then no run was created and the journal is removed.

        Raises:
            ConfigError, StoreUnreachable, TrackingError: the store cannot take the run; the
                journal is removed (no run exists).
        """
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        try:
            reply = pending.result(
                self.wait_s if timeout is None else timeout,
                give_up=timeout is None,
                bound=ANSWER_BOUND if timeout is None else STOP_BOUND,
            )
        except (StoreUnreachable, client.RecorderGone) as error:
            if not fallback:
                self._discard()
                raise StoreUnreachable(str(error)) from None
            self.service, self.unrecorded = None, str(error)
            return None
        except (ConfigError, TrackingError):
            self._discard()
            raise
        if reply.get("skipped") is not None:
            self._discard()
            return reply["skipped"]
        self.run_id, self.experiment_id = reply["run_id"], reply["experiment_id"]
        self.resumed = reply.get("resumed")
        self.writer.append(
            {"type": "run", "run_id": self.run_id, "experiment_id": self.experiment_id}
        )
        return None

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """A block the task times: the recording process does nothing meanwhile."""
        if self.service is None:
            yield
            return
        try:
            self.service.call("pause", timeout=30, s=QUIET_LIMIT_S)
        except (client.RecorderGone, TrackingError):
            pass  # nothing to keep quiet
        try:
            yield
        finally:
            try:
                self.service.request("resume")
            except client.RecorderGone:
                pass

    def close(
        self, status: str, error: Optional[str] = None, hurry: bool = False, wait: bool = True
    ) -> Delivery | PendingDelivery:
        """End the run: write its end, then wait until the store has everything or cannot.

        Call it with signals deferred (``signals.deferred``): it must run to its end.

        Args:
            status: FINISHED, FAILED or KILLED.
            error: the reason of a FAILED or KILLED run.
            hurry: a signal asked the process to stop: the run waits for its recording
                process ``tracking.stop_wait_s`` at most (what is not uploaded by then stays
                in the journal, for the recording process to finish after this one exits).
            wait: False returns at once, with a :class:`PendingDelivery` to wait on later
                (a sweep's next job runs while this one's last records are sent).
        """
        if self._pending is not None:  # closed before the task began: still end the run
            # (after a signal, without waiting long: a recording process still creating
            # the run uploads the journal, its end included, before it exits)
            self.started(fallback=True, timeout=self.stop_wait_s if hurry else None)
        self.writer.append({"type": "end", "status": status, "error": error})
        self.writer.close()
        if self.service is None:
            if self.unrecorded is not None:
                return Delivery(self.journal, recorded=False, reason=self.unrecorded)
            return Delivery(self.journal, recorded=False, offline=True)
        pending = PendingDelivery(
            self.journal,
            self.service.request(
                "finish",
                journal=str(self.journal),
                hurry=hurry,
                hurry_s=upload_after_signal(self.stop_wait_s),
            ),
            self.wait_s,
        )
        if not wait:
            return pending
        return pending.wait(self.stop_wait_s if hurry else None)

    def _discard(self) -> None:
        self.discarded = True
        self.writer.close()
        for path in (self.journal, marks.state_path(self.journal)):
            path.unlink(missing_ok=True)


def open_run(
    directory: Path,
    header: Header,
    tags: Mapping[str, str],
    store: Optional[Store],
    settings: Settings,
    skip: Optional[dict[str, Any]] = None,
    unrecorded: Optional[str] = None,
    reopen: Optional[str] = None,
    drain: Sequence[str] = (),
) -> LiveRun:
    """Start the run's journal in ``directory`` and ask for the run to be created (or, for
    an attempt that continues one, reopened).

    Returns at once: :meth:`LiveRun.started` collects the answer.

    Args:
        directory: the run's output directory.
        header: the journal's header.
        tags: the run's first tags (sent with its creation).
        store: where the run goes, or None to keep it offline.
        settings: retry and heartbeat settings.
        skip: ``{"config_hash": ..., "key": objective metric}`` for ``skip_existing``.
        unrecorded: why a run meant for a store is kept in its journal only.
        reopen: the run this attempt continues: reopened (RUNNING again), not created.
        drain: the earlier attempts' journals, uploaded before it is reopened.
    """
    directory = Path(directory).resolve()  # the recording process has a directory of its own
    path = journal.new_path(directory)
    earlier = None if reopen is not None else _earlier_attempt(directory, header)
    first_tags = {
        **tags,
        **({RETRY_OF_TAG: earlier} if earlier is not None else {}),
        **liveness.identity_tags(),
        liveness.HEARTBEAT_TAG: liveness.heartbeat(),
        JOURNAL_ID_TAG: header.journal_id,
        liveness.OUTPUT_DIR_TAG: str(directory),
    }
    writer = Writer(path, header)
    writer.append({"type": "tags", "tags": first_tags})
    if store is None:
        return LiveRun(writer, None, unrecorded=unrecorded)
    service = client.get()
    pending = service.request(
        "start",
        uri=store.uri,
        source=store.source,
        timeout_s=store.timeout_s,
        env=process.mlflow_settings(),
        experiment=header.experiment,
        lost_after_s=settings.lost_after_s,
        skip=skip,
        run={
            "name": header.run_name,
            "tags": first_tags,
            "journal": str(path),
            "offset": path.stat().st_size,  # the run is created with what is written so far
            "retry_s": settings.retry_s,
            "heartbeat_s": settings.heartbeat_s,
            "pid": os.getpid(),
            "reopen": reopen,
            "drain": [str(Path(item).resolve()) for item in drain],
        },
    )
    return LiveRun(
        writer,
        service,
        pending,
        wait_s=answer_within(settings, store),
        stop_wait_s=settings.stop_wait_s,
    )


def adopt(path: Path, store: Store, status: str, reason: str, settings: Settings) -> Optional[str]:
    """Upload a journal whose process is gone and end its run; return the run's id.

    The store is retried for ``settings.retry_s``, and the recording process given the
    bound those settings give (:func:`answer_within`), as for a live run.
    """
    reply = client.get().call(
        "adopt",
        timeout=answer_within(settings, store),
        give_up=True,
        bound=ANSWER_BOUND,
        journal=str(Path(path).resolve()),
        uri=store.uri,
        source=store.source,
        timeout_s=store.timeout_s,
        retry_s=settings.retry_s,
        env=process.mlflow_settings(),
        close=[status, reason],
    )
    return reply.get("run_id")


def call(store: Store, function: str, settings: Settings, **arguments: Any) -> dict[str, Any]:
    """Have the recording process call ``function(client, **arguments)`` on ``store``.

    What the record path does for a part above it (a sweep's report, logged into its
    parent run) is handed over by name, as data: ``"module:function"``, a function of this
    package that takes an ``MlflowClient`` and JSON arguments and returns a JSON mapping.
    The record path imports none of those parts itself. The answer is waited for as long
    as ``settings`` give (:func:`answer_within`); past that, :class:`client.RecorderGone`
    says so, naming them, and the recording process goes on.

    Returns:
        The function's mapping, and ``seconds``, how long it took.
    """
    return client.get().call(
        "call",
        timeout=answer_within(settings, store),
        bound=ANSWER_BOUND,
        uri=store.uri,
        source=store.source,
        timeout_s=store.timeout_s,
        env=process.mlflow_settings(),
        function=function,
        arguments=arguments,
    )


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
        state = marks.State.load(path, header.tracking_uri)
        earlier = (run or {}).get("run_id") or state.run_id or earlier
    return earlier
