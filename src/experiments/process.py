"""Process-wide settings: the one module that changes them, called only by entry points.

A process's environment variables, its garbage collector, its logging's record factory are
shared by everything in it, so nothing here happens as a side effect of importing a module
or opening a store: the entry points (``python -m experiments``, the recording process,
``experiments.sync``, ``experiments.report``, a sweep's start) call these functions, and
what must not outlive a command or a sweep is undone by them.

- The garbage collector during start-up (:func:`pause_collector`, :func:`settle`): loading
  torch, Hydra and torch's compiler creates hundreds of thousands of objects that live as
  long as the process, and the collector's passes over them cost about a second of a short
  run's start-up. A process that did not pause it (a test, a library user, a sweep's
  worker) is left as it is.
- Environment variables (:func:`set_env`, :func:`restore_env`, :func:`hydra_reraises`,
  :func:`mlflow_http_bounds`, :func:`adopt_mlflow_settings`).
- The log-record factory that keeps passwords out of every log line
  (:func:`scrub_log_records`).

Signal dispositions have their own module, :mod:`experiments.signals`.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator, Mapping

_paused = False
_set_here: dict[str, str | None] = {}  # a variable set by set_env: its value before


def pause_collector() -> None:
    """Turn the cyclic garbage collector off while this process loads what it needs."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def settle() -> None:
    """Start-up is over: keep what was loaded out of later passes; collector on again."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def set_env(name: str, value: str) -> None:
    """Set an environment variable until :func:`restore_env` puts back what it was."""
    _set_here.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def restore_env() -> None:
    """Put back every variable :func:`set_env` changed (a sweep's end)."""
    while _set_here:
        name, before = _set_here.popitem()
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def env_for_block(name: str, value: str) -> Iterator[None]:
    """Set an environment variable while the block runs; what was there comes back after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def hydra_reraises() -> AbstractContextManager[None]:
    """Have Hydra re-raise errors instead of printing them (``HYDRA_FULL_ERROR=1``).

    Hydra prints composition errors over several lines and job errors with a traceback;
    re-raised, they can be reported as one line. Undone when the block ends.
    """
    return env_for_block("HYDRA_FULL_ERROR", "1")


MLFLOW_HTTP = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def bound_mlflow_http(timeout_s: float) -> None:
    """Bound MLflow's HTTP waits in this process, keeping settings the user made.

    MLflow's client retries a refused connection for minutes by default; a command that
    cannot record should say so at once. For the recording process, whose life is its
    command's; commands that end while their caller goes on use :func:`mlflow_http_bounds`.
    """
    os.environ.setdefault(MLFLOW_HTTP[0], "0")
    os.environ.setdefault(MLFLOW_HTTP[1], str(int(math.ceil(timeout_s))))


@contextmanager
def mlflow_http_bounds(timeout_s: float) -> Iterator[None]:
    """:func:`bound_mlflow_http` for a block; what was there before comes back after it."""
    before = {name: os.environ.get(name) for name in MLFLOW_HTTP}
    bound_mlflow_http(timeout_s)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def adopt_mlflow_settings(env: Mapping[str, str]) -> None:
    """Take the ``MLFLOW_*`` settings of the process served (credentials, timeouts) as they
    are now: the recording process, for each store a run asks it to open."""
    for name in [name for name in os.environ if name.startswith("MLFLOW_")]:
        if name not in env and name not in MLFLOW_HTTP:
            del os.environ[name]
    os.environ.update(env)


def mlflow_settings() -> dict[str, str]:
    """This process's ``MLFLOW_*`` settings, to hand to the recording process."""
    return {name: value for name, value in os.environ.items() if name.startswith("MLFLOW_")}


@contextmanager
def scrubbed_output() -> Iterator[None]:
    """Passwords out of what this process prints for a block (MLflow prints run URLs, with
    the login of the URI it was given), and out of its log lines; the streams come back
    after it."""
    from experiments.record.uris import ScrubbedStream

    scrub_log_records()
    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(sys.stdout), ScrubbedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


def scrub_log_records() -> None:
    """Keep passwords out of every log line of this process, whoever logs it and wherever.

    Hydra logs each job's overrides (``#0 : tracking.uri=...``) and sets up its handlers
    anew for each job, so this works on the records themselves, as they are made.
    """
    from experiments.record.uris import scrub

    make = logging.getLogRecordFactory()
    if getattr(make, "scrubs", False):
        return

    def scrubbed(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = scrub(message), None
        return record

    scrubbed.scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbed)
