"""The tracking store: opening it, its experiments, creating runs, closing lost ones.

Runs are created here; everything they record afterwards goes through their journal and
the uploader (:mod:`.upload`). Opening a store sets nothing process-wide: the entry points
bound MLflow's HTTP waits (:mod:`experiments.process`).
"""

from __future__ import annotations

import base64
import logging
import math
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from experiments import locks, names
from experiments.errors import ConfigError, StoreUnreachable, TrackingError, first_line
from experiments.record import liveness
from experiments.record.store.bulk import BulkMetrics
from experiments.record.store.failures import describe, is_transient
from experiments.record.uris import absolute, redact, sqlite_path
from experiments.record.uris import resolve as resolve_uri

log = logging.getLogger(__name__)

ATTEMPT_TAG = names.ATTEMPT_TAG
RESUMED_TAG = names.RESUMED_TAG
CHECKPOINT_TAG = names.CHECKPOINT_TAG
ERROR_TAG = names.ERROR_TAG


STATEMENT_TIMEOUTS = 6  # a statement may take this many tracking.timeout_s (a minute by default)


def bounded_database_uri(uri: str, timeout_s: float) -> str:
    """A PostgreSQL URI whose waits are bounded; any other URI as it is.

    libpq's ``connect_timeout`` gives up on a database host that does not answer after
    ``timeout_s`` (2 s at least), and a ``statement_timeout`` of :data:`STATEMENT_TIMEOUTS`
    times that on one that accepted the connection and then hangs (a lock held elsewhere).
    Either is kept where the URI sets it. Without them, a connection or a statement waits as
    long as the system's TCP settings allow: minutes, or for ever.
    """
    if not uri.startswith("postgresql"):
        return uri
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {key for key, _ in query}
    if "connect_timeout" not in given:
        query.append(("connect_timeout", str(max(2, math.ceil(timeout_s)))))
    if "options" not in given:
        statement_ms = int(STATEMENT_TIMEOUTS * max(2.0, timeout_s) * 1000)
        query.append(("options", f"-c statement_timeout={statement_ms}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def open_existing(
    uri: str | None, flag: str = "--tracking-uri", timeout_s: float = 10.0
) -> Tracker:
    """A store that exists already, for a command that reads it (``report``, ``rerun``).

    A SQLite file that is not there is an error, not created; errors name ``flag`` where
    the URI came from it.
    """
    resolved, source = resolve_uri(uri)
    source = flag if source == "tracking.uri" else source
    path = sqlite_path(resolved)
    if path is not None and not path.is_file():
        shown = Path(resolved.removeprefix("sqlite:///"))  # as the user wrote it
        raise ConfigError(f"{source}={redact(resolved)}: no tracking store at {shown}")
    try:  # absolute: MLflow keeps one store per URI string in a process
        return Tracker(absolute(resolved), timeout_s, source)
    except ConfigError as error:
        raise ConfigError(str(error).replace("tracking.uri=", f"{source}=", 1)) from error


class Tracker:
    """A tracking store, opened once per process and shared by the runs it starts.

    Args:
        uri: the tracking URI (see :func:`.uris.resolve`), or None for the default.
        timeout_s: how long to wait for a remote server before giving up.
        source: where ``uri`` came from, when the caller resolved it already (errors name it).
    """

    def __init__(
        self, uri: str | None = None, timeout_s: float = 10.0, source: str | None = None
    ) -> None:
        self.uri, self.source = (uri, source) if uri and source else resolve_uri(uri)
        self.key = redact(absolute(self.uri))  # how journals and upload marks name it
        self.shown = f"{self.source}={redact(self.uri)}"  # how errors name it: no password
        self.timeout_s = timeout_s
        if self.uri.startswith(("http://", "https://")):
            _check_server(self.uri, self.shown, timeout_s)
        # The first client to open a fresh SQLite store creates its tables; two processes
        # doing that at once leave it half-migrated and unusable. Serialise the opening.
        self._experiments: dict[str, str] = {}
        self._checked: set[str] = set()  # experiments whose lost runs were looked for
        self.bulk: Any = None  # a BulkMetrics where the store is SQLite or PostgreSQL
        opened = bounded_database_uri(self.uri, timeout_s)
        if opened.startswith("postgresql"):
            _check_database(opened, self.shown)
        with self._store_lock():
            self.client = MlflowClient(tracking_uri=opened)
            try:
                self.client.search_experiments(max_results=1)
            except MlflowException as error:
                kind = StoreUnreachable if is_transient(error) else ConfigError
                raise kind(
                    f"{self.shown}: cannot open the tracking store: {describe(error)}"
                ) from error
        self.bulk = BulkMetrics.for_uri(opened)

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing, safely across processes.

        Two processes creating the same experiment at once make one fail; on a SQLite
        store the lock serialises them, elsewhere the loser reads the winner's experiment.
        The id is remembered, so the jobs of a sweep look it up once.
        """
        if name not in self._experiments:
            try:
                self._experiments[name] = self._find_or_create(name)
            except MlflowException as error:
                if not is_transient(error):
                    raise
                raise self.unreachable(error) from error
        return self._experiments[name]

    def unreachable(self, error: Exception) -> StoreUnreachable:
        """The one-line error for a store that failed to answer."""
        reason = describe(error)
        return StoreUnreachable(f"{self.shown}: the tracking store does not answer: {reason}")

    def _find_or_create(self, name: str) -> str:
        with self._store_lock():
            try:
                experiment = self.client.get_experiment_by_name(name)
                if experiment is not None:
                    return experiment.experiment_id
                return self.client.create_experiment(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.client.get_experiment_by_name(name).experiment_id

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, Any]) -> str:
        """Create a RUNNING run and return its id; a store that refuses is one line.

        Raises:
            TrackingError: the store could not create the run.
        """
        try:
            run = self.client.create_run(
                experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
            )
        except MlflowException as error:
            if is_transient(error):
                raise self.unreachable(error) from error
            raise TrackingError(f"{self.shown}: cannot create a run: {describe(error)}") from error
        return run.info.run_id

    def reopen_run(self, run_id: str, tags: Mapping[str, Any]) -> dict[str, Any]:
        """Make an interrupted run RUNNING again, for an attempt that continues it (see
        :func:`reopen`).

        Raises:
            TrackingError: the run does not exist, or FINISHED already.
        """
        try:
            return reopen(self.client, run_id, tags)
        except MlflowException as error:
            if is_transient(error):
                raise self.unreachable(error) from error
            raise TrackingError(f"{self.shown}: no run {run_id} to continue") from error

    def resumable_run(self, experiment_id: str, identity: str) -> Optional[dict[str, Any]]:
        """The newest run of this config hash that ended before its end (KILLED, FAILED)
        and left a checkpoint this host can read (``skip_existing`` continues it), or None."""
        from experiments.checkpoints import latest_path

        found = self.client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{names.CONFIG_HASH_TAG}` = '{identity}' and "
                "attributes.status != 'FINISHED' and attributes.status != 'RUNNING'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        for run in found:
            directory = run.data.tags.get(CHECKPOINT_TAG)
            path = latest_path(Path(directory)) if directory else None
            if path is not None:
                output = run.data.tags.get(liveness.OUTPUT_DIR_TAG)
                return {"run_id": run.info.run_id, "checkpoint": str(path), "output_dir": output}
        return None

    def close_lost_runs(self, experiment_id: str, lost_after_s: float) -> None:
        """Close the lost runs of an experiment (see ``record.liveness``), once a process.

        A store that fails this query does not stop the run: it is logged and left.
        """
        if experiment_id in self._checked:
            return
        self._checked.add(experiment_id)
        try:
            liveness.close_lost_runs(self.client, [experiment_id], lost_after_s)
        except MlflowException as error:
            log.warning("could not look for lost runs: %s", first_line(error))

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Serialise opening a SQLite store and creating its experiments, across processes
        and hosts: a lock file beside the database (``mlflow.db.lock``, see ``locks``)."""
        path = sqlite_path(self.uri)
        if path is None:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with locks.beside(path, timeout_s=max(60.0, self.timeout_s)):
                yield
        except locks.LockTimeout as error:
            raise StoreUnreachable(
                f"{self.shown}: cannot open the tracking store: {error}"
            ) from None


def reopen(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """Make an interrupted run RUNNING again, for an attempt that continues it.

    Its ``error`` goes, ``attempt`` counts this one (2 for the first resume) and ``resumed``
    how many times it was continued; ``tags`` are the new attempt's (where it runs, its
    heartbeat: not its journal's id, which names the run's first; that id goes to
    ``attempt.journal``, so that an earlier attempt's journal uploaded late, from another
    machine, knows it no longer speaks for the run). Returns the attempt's
    number and, by metric, the last step the store holds (what the attempt must not record
    again).

    Raises:
        TrackingError: the run FINISHED already.
        MlflowException: the store failed, or has no such run.
    """
    run = client.get_run(run_id)
    if run.info.status == "FINISHED":
        raise TrackingError(f"run {run_id} FINISHED already: there is nothing to continue")
    attempt = int(run.data.tags.get(ATTEMPT_TAG, "1") or 1) + 1
    steps = {metric.key: int(metric.step) for metric in run.data._metric_objs}
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    kept = {k: str(v) for k, v in tags.items() if k != names.JOURNAL_ID_TAG}
    kept.update({ATTEMPT_TAG: str(attempt), RESUMED_TAG: str(attempt - 1)})
    if tags.get(names.JOURNAL_ID_TAG):
        kept[names.ATTEMPT_JOURNAL_TAG] = str(tags[names.JOURNAL_ID_TAG])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in kept.items()])
    client.update_run(run_id, status="RUNNING")
    return {"attempt": attempt, "steps": steps, "tags": dict(run.data.tags)}


def finished_run(
    client: MlflowClient, experiment_id: str, identity: str, objective_key: str | None
) -> dict[str, Any] | None:
    """The newest FINISHED run of an experiment with this config hash (``skip_existing``):
    ``{"run_id": ..., "objective": ...}``, or None.

    Raises:
        MlflowException: the store failed.
    """
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`config.hash` = '{identity}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    metrics = found[0].data.metrics
    # A run recorded before may hold its objective under a legacy name (result/loss, loss).
    objective = None if objective_key is None else names.recorded(metrics, objective_key)
    return {"run_id": found[0].info.run_id, "objective": objective}


def _check_server(uri: str, shown: str, timeout_s: float) -> None:
    parts = urlsplit(uri)
    request = urllib.request.Request(
        urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])).rstrip("/") + "/health"
    )
    if parts.username is not None:  # http://user:password@host: a login, as MLflow's client
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise StoreUnreachable(f"{shown}: cannot reach the MLflow server ({reason})")


def _check_database(uri: str, shown: str) -> None:
    """One connection to a PostgreSQL store, bounded by its ``connect_timeout``.

    MLflow retries a database it cannot reach for about two minutes before it gives up; a
    store that does not answer within the timeout is said so at once instead.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        reason = describe(error.orig if error.orig is not None else error)
        kind = ConfigError if "authentication failed" in reason else StoreUnreachable
        raise kind(f"{shown}: cannot open the tracking store: {reason}") from None
    finally:
        engine.dispose()
