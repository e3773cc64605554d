"""The tracking store: opening it, its experiments, creating runs, closing lost ones.

Runs are created here; everything they record afterwards goes through their journal and
the uploader (:mod:`.upload`). Opening a store sets nothing process-wide: the entry points
bound MLflow's HTTP waits (:mod:`experiments.process`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from experiments.errors import ConfigError, StoreUnreachable, TrackingError, first_line
from experiments.record import liveness
from experiments.record.store.bulk import BulkMetrics
from experiments.record.store.failures import describe, is_transient
from experiments.record.uris import absolute, redact, sqlite_path
from experiments.record.uris import resolve as resolve_uri

log = logging.getLogger(__name__)


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
        with self._store_lock():
            self.client = MlflowClient(tracking_uri=self.uri)
            try:
                self.client.search_experiments(max_results=1)
            except MlflowException as error:
                kind = StoreUnreachable if is_transient(error) else ConfigError
                raise kind(
                    f"{self.shown}: cannot open the tracking store: {describe(error)}"
                ) from error
        self.bulk = BulkMetrics.for_uri(self.uri)

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

    def _store_lock(self) -> Any:
        path = sqlite_path(self.uri)
        if path is None:
            return _NoLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # The lock lives in the temp directory, keyed by the database's path, so the
        # user's directory holds only mlflow.db.
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"experiments-store-{digest}.lock"
        return FileLock(str(lock), timeout=max(60.0, self.timeout_s))


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


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
