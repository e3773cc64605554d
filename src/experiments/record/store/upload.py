"""The uploader: turns a run's journal into MLflow calls, resumably and idempotently.

One :class:`Uploader` per journal. Each :meth:`Uploader.pump` reads the records written
since the last one, sends them in as few ``log_batch`` calls as MLflow allows (params,
tags and metric points together, up to 1,000 entries a call), then the artifacts, then the
run's end, and only then moves its mark forward. The mark (the journal's byte offset and
the run it goes to) is saved next to the journal, so an upload cut short starts again where
it was; what it sends twice is harmless (a metric point is the same key, step, time and
value, which the store keeps once; params and tags are set to the same value again).

The same uploader serves a live run (driven by the recording process), a run whose store
went away, and ``python -m experiments.sync``. It raises the store's errors; the caller
decides how long to retry (:func:`.failures.is_transient` tells which are worth it).

While it sends, the uploader says so on the run (``upload.*`` tags, refreshed every
:data:`~experiments.record.liveness.UPLOAD_BEAT_S`), so that no other process takes a run
whose own process has ended, but whose journal is still on its way, for lost. It ends the
run as its journal says, then reads the end back: a run that another process closed as lost
at that moment (it looked before the end was written) gets the journal's end again.

A run continued by a later attempt names that attempt's journal (``attempt.journal``). An
upload after the fact of an earlier attempt's journal (a ``sync`` on the machine the run was
killed on, after it was continued on another from the store's copy of its checkpoint) then
sends only the metric points at steps the store lacks, and ends nothing: the later attempt
recorded again every step past its checkpoint, and the run's end is its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments.names import ATTEMPT_JOURNAL_TAG, ERROR_TAG, JOURNAL_ID_TAG, NOTE_TAG, PARENT_TAG
from experiments.record import journal, liveness
from experiments.record.liveness import LOST_PREFIX
from experiments.record.marks import State
from experiments.record.store.bulk import SchemaMismatch
from experiments.record.store.failures import again_on_conflict
from experiments.record.store.tracker import reopen

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 30.0  # the store's copy of a run's latest checkpoint: at most this often
MAX_ENTRIES = 1000  # MLflow's log_batch limits
MAX_PARAMS_OR_TAGS = 100


@dataclass
class Counts:
    """What one uploader sent."""

    points: int = 0
    params: int = 0
    tags: int = 0
    artifacts: int = 0
    skipped: list[str] = field(default_factory=list)


class Uploader:
    """Sends one journal into one run of a store.

    Args:
        client: an ``MlflowClient`` on the store.
        path: the journal.
        state: where the journal stands with this store (:meth:`State.load`).
        repair: the run may have been closed as lost meanwhile (an upload after the fact):
            check, and remove that note when the journal ends it otherwise.
        bulk: a :class:`.bulk.BulkMetrics` for the store: metric points go in one
            statement per table instead of ``log_batch`` (None: ``log_batch``).
        figures: the live run's own recording process, which draws the figures the run
            sends it: an artifact line of a figure not drawn yet waits for it until the run
            has ended. False: a figure never drawn is a missing artifact.
    """

    def __init__(
        self,
        client: Any,
        path: Path,
        state: State,
        repair: bool = False,
        bulk: Optional[Any] = None,
        figures: bool = False,
    ) -> None:
        self.client = client
        self.repair = repair
        self.bulk = bulk
        self.figures = figures
        self.waiting: list[dict[str, Any]] = []  # figures' artifact lines not drawn yet
        self.final = False
        self.path = path
        self.state = state
        self.header = journal.read_header(path)
        self.counts = Counts()
        self.base = path.parent
        self.last_time: int = self.header.time
        self.note_due = bool(self.header.note)
        self.claimed_at: Optional[float] = None  # when the upload.* tags were last sent
        # The latest checkpoint recorded and not sent yet, and when one was last sent: the
        # store gets one every CHECKPOINT_EVERY_S at most while the run goes on, and the last.
        self.checkpoint: Optional[dict[str, Any]] = None
        self.checkpoint_sent: Optional[float] = None
        # An attempt that continues a run, uploaded after the fact: by metric, the last step
        # the store held when it reopened the run (the steps run again are not sent twice).
        self.recorded: dict[str, int] = {}
        # Uploaded after the fact: the journal of a later attempt that continues the run now,
        # where there is one (this journal's records and end are then no longer the run's).
        self.superseded: Optional[str] = None
        self.checked_attempt = not repair
        self.held: dict[str, set[int]] = {}  # then, by metric, the steps the store holds

    @property
    def run_id(self) -> Optional[str]:
        return self.state.run_id

    def pending(self) -> bool:
        """Whether the journal holds bytes the store has not received yet."""
        try:
            return self.path.stat().st_size > self.state.offset
        except OSError:
            return False

    def pump(self, final: bool = False) -> bool:
        """Send the next records; True when they were all the journal held when read.

        A journal still being written may have grown meanwhile: the caller decides when to
        come back for more.

        Args:
            final: the writer is gone: a cut last line is skipped, not waited for.

        Raises:
            Whatever the store raised; the mark stays before the records that were not sent.
        """
        self.final = final
        chunk = journal.read(self.path, self.state.offset, final=final)
        for warning in chunk.skipped:
            if warning not in self.counts.skipped:
                log.warning("%s", warning)
                self.counts.skipped.append(warning)
        if self.state.run_id is None:
            self.ensure_run(chunk.records)
        if not self.checked_attempt:
            self.checked_attempt = True
            self.superseded = self._later_attempt()
        if self.superseded is not None:
            self._fill(chunk.records)
            self.state.offset, self.state.ended = chunk.end, True  # its end is not the run's
            self.state.save(self.path)
            return chunk.at_end
        self._send(chunk.records)
        self.state.offset = chunk.end
        self.state.save(self.path)
        for record in list(self.waiting):  # drawn by now, or (the run has ended) never
            if final or self._drawn(record):
                self.waiting.remove(record)
                self._log_artifact(record)
        return chunk.at_end

    def ensure_run(self, records: list[dict[str, Any]] | None = None) -> str:
        """The run this journal goes to: recorded in it, found by its journal id, or created.

        A journal whose run the store created while it was written names the run in its
        ``run`` line. Otherwise (a run kept offline) the run is looked up by the journal's id
        tag, so an upload cut short after creating it does not create a second one, and
        created with the journal's name, start time and parent when not found.
        """
        if self.state.run_id is not None:
            return self.state.run_id
        known = next(
            (r for r in (records or journal.records(self.path)) if r.get("type") == "run"), None
        )
        if known is not None and self._exists(known["run_id"]):
            self.state.run_id = known["run_id"]
            self.state.experiment_id = known.get("experiment_id")
        else:
            self.state.experiment_id = self._experiment_id()
            found = self._by_journal(self.header.journal_id)
            continued = self.header.resumes or self._by_journal(self.header.first)
            if found is not None:
                self.state.run_id = found
            elif continued is not None:  # an attempt that continues a run: reopened
                self.state.run_id = continued
                tags = {JOURNAL_ID_TAG: self.header.journal_id}
                self.recorded = reopen(self.client, continued, tags)["steps"]
            else:
                self.state.run_id = self._create_run()
        self.state.save(self.path)
        return self.state.run_id

    def _later_attempt(self) -> Optional[str]:
        """The journal of a later attempt recording this run, if the store names another."""
        current = self.client.get_run(self.state.run_id).data.tags.get(ATTEMPT_JOURNAL_TAG)
        if current in (None, self.header.journal_id):
            return None
        log.info(
            "%s: run %s was continued by a later attempt (journal %s): of this earlier "
            "attempt, only the metric points the store lacks are sent",
            self.path,
            self.state.run_id,
            current,
        )
        self.note_due = False
        return current

    def _fill(self, records: list[dict[str, Any]]) -> None:
        """An earlier attempt's journal, uploaded after a later attempt continued its run
        (on another machine, from the store's copy of its checkpoint; or a sync cut short):
        the metric points the store lacks, at steps no attempt recorded, and nothing else.
        The later attempt recorded again the steps past its checkpoint; its params, tags,
        checkpoints and end are the run's."""
        points: list[tuple[str, float, int, int]] = []
        for record in records:
            if record["type"] != "metrics":
                continue
            stamp, step = record["time"], record.get("step", 0)
            for key, value in record["values"].items():
                held = self._held(key)
                if step not in held:
                    held.add(step)
                    points.append((key, journal.metric_value(value), stamp, step))
        if points:
            self._log_batches([], {}, points)

    def _held(self, key: str) -> set[int]:
        """The steps of metric ``key`` the store holds for this run (read once)."""
        if key not in self.held:
            history = self.client.get_metric_history(self.state.run_id, key)
            self.held[key] = {point.step for point in history}
        return self.held[key]

    def _by_journal(self, journal_id: Optional[str]) -> Optional[str]:
        """The run that the journal ``journal_id`` created, if the store has it."""
        if not journal_id:
            return None
        found = self.client.search_runs(
            [self.state.experiment_id],
            filter_string=f"tags.`{JOURNAL_ID_TAG}` = '{journal_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def close(self, status: str, reason: str, end_ms: int) -> None:
        """End a run whose journal has no end line (its process is gone)."""
        self._end({"status": status, "error": reason, "time": end_ms})
        self.state.save(self.path)

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.header.experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def _create_run(self) -> str:
        tags = {JOURNAL_ID_TAG: self.header.journal_id, **self._claim()}
        parent = self.header.parent_run_id or self._parent_from_journal()
        if parent is not None:
            tags[PARENT_TAG] = parent
        run = self.client.create_run(
            self.state.experiment_id,
            start_time=self.header.time,
            tags=tags,
            run_name=self.header.run_name,
        )
        return run.info.run_id

    def _parent_from_journal(self) -> Optional[str]:
        """The run of the parent journal (a sweep kept offline), once that was uploaded."""
        return self._by_journal(self.header.parent_journal)

    def _send(self, records: list[dict[str, Any]]) -> None:
        params: list[tuple[str, str]] = []  # a param set twice to two values is refused
        tags: dict[str, str] = {}  # a tag set twice keeps its last value
        if self.note_due and self.state.run_id is not None:
            # The header's note, with the run's id, goes with this uploader's first batch.
            tags[NOTE_TAG] = str(self.header.note).replace("{run_id}", self.state.run_id)
            self.note_due = False
        due = (
            self.claimed_at is None or time.monotonic() - self.claimed_at >= liveness.UPLOAD_BEAT_S
        )
        if due and self.state.run_id is not None:
            tags.update(self._claim())  # first in the batch: this process sends the journal
        metrics: list[tuple[str, float, int, int]] = []  # key, value, time, step
        artifacts: list[dict[str, Any]] = []
        end = None
        for record in records:
            kind = record["type"]
            self.last_time = record.get("time", self.last_time)
            if kind == "metrics":
                stamp, step = record["time"], record.get("step", 0)
                metrics.extend(
                    (key, journal.metric_value(value), stamp, step)
                    for key, value in record["values"].items()
                    if step > self.recorded.get(key, -1)
                )
            elif kind == "params":
                params.extend(record["params"].items())
            elif kind == "tags":
                tags.update(record["tags"])
            elif kind == "artifact":
                artifacts.append(record)
            elif kind == "end":
                end = record
        self._log_batches(params, tags, metrics)
        for artifact in artifacts:
            if artifact.get("checkpoint"):
                self.checkpoint = artifact  # the latest; those before are superseded
            else:
                self._log_artifact(artifact)
        self._send_checkpoint()
        if end is not None:
            self._end(end)

    def _log_batches(
        self,
        params: list[tuple[str, str]],
        tags: dict[str, str],
        points: list[tuple[str, float, int, int]],
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        param_items = [Param(k, v) for k, v in dict.fromkeys(params)]
        tag_items = [RunTag(k, v) for k, v in tags.items()]
        metrics: list[Metric] = []
        if self.bulk is not None and points:
            try:
                self.bulk.write(self.state.run_id, points)
                self.counts.points += len(points)
                points = []
            except SchemaMismatch as error:  # not a store this was written for: MLflow's way
                log.warning("%s; metric points go through log_batch from here", error)
                self.bulk = None
        metrics = [Metric(*point) for point in points]
        while param_items or tag_items or metrics:
            some_params = param_items[:MAX_PARAMS_OR_TAGS]
            some_tags = tag_items[:MAX_PARAMS_OR_TAGS]
            room = MAX_ENTRIES - len(some_params) - len(some_tags)
            some_metrics = metrics[:room]
            again_on_conflict(
                self.client.log_batch,
                self.state.run_id,
                metrics=some_metrics,
                params=some_params,
                tags=some_tags,
                synchronous=True,
            )
            param_items = param_items[len(some_params) :]
            tag_items = tag_items[len(some_tags) :]
            metrics = metrics[len(some_metrics) :]
            self.counts.params += len(some_params)
            self.counts.tags += len(some_tags)
            self.counts.points += len(some_metrics)

    def _send_checkpoint(self) -> None:
        """Send the latest checkpoint recorded, if one is due (see ``checkpoint_sent``)."""
        if self.checkpoint is None:
            return
        now = time.monotonic()
        due = self.checkpoint_sent is None or now - self.checkpoint_sent >= CHECKPOINT_EVERY_S
        if not (due or self.final):
            return
        record, self.checkpoint = self.checkpoint, None
        self._log_artifact(record)
        self.checkpoint_sent = now

    def _drawn(self, record: dict[str, Any]) -> bool:
        path = Path(record["file"])
        return (path if path.is_absolute() else self.base / path).is_file()

    def _log_artifact(self, record: dict[str, Any]) -> None:
        path = Path(record["file"])
        path = path if path.is_absolute() else self.base / path
        if record.get("checkpoint"):
            # The latest checkpoint, as the store keeps it; one removed since (a newer one
            # was committed, and is recorded after it) is not missing.
            if path.is_dir():
                self.client.log_artifacts(self.state.run_id, str(path), record.get("dir"))
                self.counts.artifacts += 1
            return
        if not path.is_file() and self.figures and record.get("figure") and not self.final:
            self.waiting.append(record)  # the recording process draws it in a moment
            return
        if not path.is_file():
            warning = f"{self.path}: artifact {path} is missing; not uploaded"
            log.warning("%s", warning)
            self.counts.skipped.append(warning)
            return
        self.client.log_artifact(self.state.run_id, str(path), record.get("dir"))
        self.counts.artifacts += 1

    def _claim(self) -> dict[str, str]:
        """The ``upload.*`` tags: this process uploads the journal (see ``liveness``)."""
        self.claimed_at = time.monotonic()
        return liveness.uploader_tags()

    def _end(self, record: dict[str, Any]) -> None:
        """End the run as ``record`` says; then read it back, and end it again where
        another process closed it as lost meanwhile (see the module)."""
        for _ in range(3):  # the end, read back; written again where it was overwritten
            current = self._write_end(record)
            status = current.info.status
            error = current.data.tags.get(ERROR_TAG)
            wanted = str(record["error"])[:5000] if record.get("error") else None
            if status == record["status"] and (error == wanted or (wanted is None and not error)):
                break
            if wanted is None and error and not error.startswith(LOST_PREFIX):
                break  # an error of the run's own, logged as a tag: not a closing to undo
            log.warning(
                "run %s was closed as %s (%s) by another process while its journal was "
                "uploaded: ended %s again, as its journal says",
                self.state.run_id,
                status,
                error,
                record["status"],
            )
        self.state.ended = True

    def _write_end(self, record: dict[str, Any]) -> Any:
        """Write the run's end; return the run as the store holds it afterwards."""
        from mlflow.exceptions import MlflowException

        run_id = self.state.run_id
        if record.get("error"):
            again_on_conflict(self.client.set_tag, run_id, ERROR_TAG, str(record["error"])[:5000])
        else:
            # A run closed as lost meanwhile (its heartbeat did not reach the store, as seen
            # from another host), or while its records could not reach the store and then
            # uploaded later: it ended well after all, the journal knows better, the lost
            # note goes.
            current = self.client.get_run(run_id).data.tags.get(ERROR_TAG, "")
            if current.startswith(LOST_PREFIX):
                try:
                    self.client.delete_tag(run_id, ERROR_TAG)
                except MlflowException as error:
                    if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise  # (another process removed it at the same moment: done)
        self.client.set_terminated(run_id, status=record["status"], end_time=record["time"])
        return self.client.get_run(run_id)


def deliver(
    client: Any,
    path: Path,
    tracking_uri: str,
    close: tuple[str, str] | None = None,
    repair: bool = True,
    bulk: Optional[Any] = None,
) -> Uploader:
    """Upload everything a journal holds that the store lacks, for a run no one writes now.

    Args:
        client: an ``MlflowClient`` on the store.
        path: the journal.
        tracking_uri: the store's URI (the upload mark is kept per store).
        close: ``(status, reason)`` to end the run with when the journal has no end line
            (its process is gone); None leaves such a run as it is.
        repair, bulk: see :class:`Uploader`.

    Returns:
        The uploader, whose ``counts`` say what was sent.
    """
    uploader = Uploader(client, path, State.load(path, tracking_uri), repair=repair, bulk=bulk)
    uploader.ensure_run()
    while not uploader.pump(final=True):
        pass
    if close is not None and not uploader.state.ended:
        status, reason = close
        last = journal.last_record(path) or {}
        uploader.close(status, reason, int(last.get("time", uploader.last_time)))
    return uploader


def journals_of(directory: Optional[str], run_id: str, tracking_uri: str) -> list[str]:
    """The journals in ``directory`` that recorded run ``run_id`` in this store."""
    if not directory or not Path(directory).is_dir():
        return []
    found = []
    for path in journal.find([directory]):
        state = State.load(path, tracking_uri)
        known = next((r for r in journal.records(path) if r.get("type") == "run"), {})
        if run_id in (state.run_id, known.get("run_id")):
            found.append(str(path))
    return found


def drain(client: Any, path: Path, tracking_uri: str, bulk: Optional[Any] = None) -> None:
    """Upload what an earlier attempt's journal holds and the store lacks, its end included
    (closed as lost where it has none): before the run it recorded is continued.

    Raises:
        RuntimeError: a process still writes the journal (its run goes on).
    """
    if journal.held(path):
        raise RuntimeError(f"{path} is still being written by a process: its run goes on")
    state = State.load(path, tracking_uri)
    if state.ended and state.offset >= path.stat().st_size:
        return
    header = journal.read_header(path)
    last = (journal.last_record(path) or {}).get("time", header.time)
    reason = (
        f"{LOST_PREFIX} process {header.pid} on {header.host} ended without closing the run "
        f"(last record {liveness.heartbeat(last)})"
    )
    deliver(client, path, tracking_uri, close=("FAILED", reason), bulk=bulk)
