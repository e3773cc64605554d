"""The MLflow side of a run: the store, the experiment, and a batching recorder.

Only this module and the runner talk to MLflow. Tasks see the :class:`MlflowRecorder`
through the backend-free ``Recorder`` protocol.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from experiments.errors import ConfigError

ERROR_TAG = "error"
# MLflow refuses longer values; a parameter that long is cut, and says so.
MAX_PARAM_LENGTH = 6000


def resolve_uri(uri: str | None) -> tuple[str, str]:
    """The tracking URI to use, and the setting it came from (for error messages).

    Precedence: ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then MLflow's own default
    (``sqlite:///mlflow.db`` in the working directory, which ``mlflow ui`` opens by default).
    """
    if uri:
        return uri, "tracking.uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return mlflow.get_tracking_uri(), "the default tracking URI"


class Tracker:
    """A tracking store, opened once per process and shared by the runs it starts.

    Args:
        uri: the tracking URI (see :func:`resolve_uri`), or None for the default.
        timeout_s: how long to wait for a remote server before giving up.
    """

    def __init__(self, uri: str | None = None, timeout_s: float = 10.0) -> None:
        self.uri, self.source = resolve_uri(uri)
        self.timeout_s = timeout_s
        if self.uri.startswith(("http://", "https://")):
            _bound_http_waits(timeout_s)
            _check_server(self.uri, self.source, timeout_s)
        # The first client to open a fresh SQLite store creates its tables; two processes
        # doing that at once leave it half-migrated and unusable. Serialise the opening.
        self._experiments: dict[str, str] = {}
        with self._store_lock():
            self.client = MlflowClient(tracking_uri=self.uri)
            try:
                self.client.search_experiments(max_results=1)
            except MlflowException as error:
                raise ConfigError(
                    f"{self.source}={self.uri}: cannot open the tracking store: "
                    f"{_first_line(error.message)}"
                ) from error

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing, safely across processes.

        Two processes creating the same experiment at once make one fail; on a SQLite
        store the lock serialises them, elsewhere the loser reads the winner's experiment.
        The id is remembered, so the jobs of a sweep look it up once.
        """
        if name not in self._experiments:
            self._experiments[name] = self._find_or_create(name)
        return self._experiments[name]

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

    @contextmanager
    def start_run(
        self, experiment_id: str, run_name: str, tags: Mapping[str, Any]
    ) -> Iterator[MlflowRecorder]:
        """Open a run and always close it: FINISHED, FAILED (reason tagged) or KILLED.

        Yields:
            A recorder writing into the new run; its buffer is flushed before the run ends.
        """
        run = self.client.create_run(
            experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
        )
        recorder = MlflowRecorder(self.client, run.info.run_id)
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield recorder
            status = RunStatus.to_string(RunStatus.FINISHED)
        except KeyboardInterrupt:
            status = RunStatus.to_string(RunStatus.KILLED)
            recorder.set_tags({ERROR_TAG: "interrupted (Ctrl-C)"})
            raise
        except BaseException as error:
            recorder.set_tags({ERROR_TAG: _first_line(str(error)) or type(error).__name__})
            raise
        finally:
            try:
                recorder.flush()
            finally:
                self.client.set_terminated(run.info.run_id, status=status)

    def _store_lock(self) -> Any:
        path = _sqlite_path(self.uri)
        if path is None:
            return _NoLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # The lock lives in the temp directory, keyed by the database's path, so the
        # user's directory holds only mlflow.db.
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"experiments-store-{digest}.lock"
        return FileLock(str(lock), timeout=max(60.0, self.timeout_s))


class MlflowRecorder:
    """Records into one MLflow run; metric points are buffered and sent in batches."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._metrics: list[Metric] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(key, _param_value(value)) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entries[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, params=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            self._metrics.append(Metric(key, float(value), timestamp, 0 if step is None else step))
        if len(self._metrics) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entries[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, tags=chunk, synchronous=True)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def flush(self) -> None:
        """Send every buffered metric point, in as few calls as MLflow allows."""
        pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)


def _param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    if len(text) > MAX_PARAM_LENGTH:
        return text[: MAX_PARAM_LENGTH - 15] + "...(truncated)"
    return text


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return None
    return Path(uri[len(prefix) :]).resolve()


def _bound_http_waits(timeout_s: float) -> None:
    # MLflow's client retries a refused connection for minutes by default; a run that
    # cannot record should say so at once. Settings the user made are kept.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(math.ceil(timeout_s))))


def _check_server(uri: str, source: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise ConfigError(f"{source}={uri}: cannot reach the MLflow server ({reason})")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
