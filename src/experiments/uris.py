"""Tracking URIs: which one a run uses and where that came from, made absolute, redacted.

No MLflow here: a run's own process resolves its URI without importing MLflow (the
recording process does the talking). The default follows MLflow's own rule, checked
against ``mlflow.get_tracking_uri()`` by the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT = "sqlite:///mlflow.db"
LEGACY_DEFAULT = "./mlruns"  # MLflow keeps using a file store where one already holds data


def resolve(uri: str | None) -> tuple[str, str]:
    """The tracking URI to use, and the setting it came from (for error messages).

    Precedence: ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then MLflow's own default
    (``sqlite:///mlflow.db`` in the working directory, which ``mlflow ui`` opens by default;
    ``./mlruns`` where that already holds experiments, as MLflow does).
    """
    if uri:
        return uri, "tracking.uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return default(), "the default tracking URI"


def default() -> str:
    """MLflow's default tracking URI for the working directory."""
    try:
        with os.scandir(LEGACY_DEFAULT) as entries:
            for entry in entries:
                if entry.is_dir() and entry.name.isdigit():
                    if os.path.lexists(os.path.join(entry.path, "meta.yaml")):
                        return LEGACY_DEFAULT
    except OSError:
        pass
    return DEFAULT


def absolute(uri: str) -> str:
    """``uri`` with a relative local path made absolute, so it means the same from anywhere."""
    path = sqlite_path(uri)
    if path is not None:
        return f"sqlite:///{path}"
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return Path(uri).resolve().as_uri()  # a local directory: MLflow's file store
    return uri


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute; None for anything else."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return None
    return Path(uri[len(prefix) :]).resolve()
