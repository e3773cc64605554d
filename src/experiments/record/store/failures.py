"""How a failed store call reads, and whether it is worth retrying.

The uploader, the tracker, the recording process and ``sync`` all ask these questions of an
error MLflow raised (or an ``OSError`` from below it).
"""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from experiments.record.uris import scrub

T = TypeVar("T")
_CONFLICT = (
    "UniqueViolation",
    "duplicate key value violates unique constraint",
    "UNIQUE constraint failed",
)

# Errors a store recovers from: a server restarting, a network blip, SQLite busy past its
# timeout (MLflow reports that as TEMPORARILY_UNAVAILABLE), an overloaded server.
TRANSIENT_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "SERVICE_UNDER_MAINTENANCE",
        "IO_ERROR",
    }
)


def is_transient(error: BaseException) -> bool:
    """Whether a failed store call is worth retrying (vs. a refusal that will not change)."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_CODES
    return isinstance(error, (OSError, TimeoutError, ConnectionError))


def is_conflict(error: BaseException) -> bool:
    """Whether a write failed only because another process wrote the same row at the same
    moment: MLflow sets a tag (or a param) by reading, then inserting where the row was not
    there, and of two processes doing that at once the second insert breaks the table's key
    (PostgreSQL's UniqueViolation behind a server's BAD_REQUEST, SQLite's UNIQUE constraint)."""
    text = str(getattr(error, "message", None) or error)
    return any(sign in text for sign in _CONFLICT)


def again_on_conflict(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, made once more when it met another writer of its row
    (:func:`is_conflict`): the row exists by then, and the second call updates it."""
    try:
        return call(*args, **kwargs)
    except Exception as error:
        if not is_conflict(error):
            raise
        return call(*args, **kwargs)


def describe(error: BaseException) -> str:
    """A store error in one short line (MLflow's messages run over many)."""
    text = str(getattr(error, "message", None) or error or type(error).__name__)
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "the request timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed"
    refused = _REFUSED.search(text)
    if refused is not None:
        endpoint, code = refused.group(1), refused.group(2)
        what = {
            "401": "the server did not accept the login (401: not authenticated; set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)",
            "403": "permission denied (403): the user may not do this",
        }[code]
        return f"{what}; refused: {endpoint}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return scrub(first[:300])


# MLflow's REST client: "API request to endpoint /api/2.0/mlflow/runs/create failed with
# error code 403 != 200. Response body: ..."
_REFUSED = re.compile(r"API request to endpoint (\S+) failed with error code (401|403)\b")
