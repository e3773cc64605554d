"""One journal the recording process uploads, and how it retries its store.

A store call that fails is retried with backoff (0.5 s, growing to 5 s) for the run's
``tracking.retry_s``; past that the run goes on in its journal and the store is tried now
and then. A refusal that will not change (a param set twice to two values) stops the upload
of that journal at once. Either way the run's process is told why, in one line.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments.record.store.failures import describe, is_transient
from experiments.record.store.upload import Uploader

log = logging.getLogger("experiments.recorder")

MAX_BACKOFF_S = 5.0


@dataclass
class Watch:
    """One journal this process uploads."""

    path: Path
    uploader: Uploader
    tracker: Any
    retry_s: float
    heartbeat_s: float
    writer_pid: int = 0
    beat_at: float = 0.0
    sync_at: float = 0.0
    synced_size: int = 0
    upload_at: float = 0.0
    outage_since: Optional[float] = None
    retry_at: float = 0.0
    lost: Optional[str] = None
    refused: Optional[str] = None
    finish_id: Optional[int] = None  # the request waiting for this journal to be done
    deadline: Optional[float] = None
    deadline_by: str = "tracking.retry_s"  # the setting the deadline comes from
    close_as: Optional[tuple[str, str]] = None  # how to end a run whose journal has no end
    writer_gone: bool = False
    done: bool = False
    warned: set[str] = field(default_factory=set)

    def recovered(self) -> None:
        """The store answered: an outage, if there was one, is over."""
        if self.outage_since is not None:
            log.warning(
                "the tracking store %s answers again after %.0f s; nothing was lost",
                self.tracker.key,
                time.monotonic() - self.outage_since,
            )
        self.outage_since, self.lost = None, None

    def failed(self, failure: Exception) -> None:
        """A store call failed: retry after a backoff, give up past the window, or note a
        refusal that will not change."""
        reason = describe(failure)
        key = self.tracker.key
        if not is_transient(failure):
            self.refused = f"the tracking store {key} refused a record: {reason}"
            log.error("%s; the run goes on, kept in %s", self.refused, self.path.parent)
            return
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            log.warning(
                "the tracking store %s does not answer (%s); retrying for up to %.0f s "
                "while the task goes on",
                key,
                reason,
                self.retry_s,
            )
        elif self.lost is None and now - self.outage_since > self.retry_s:
            waited = f"{self.retry_s:.0f} s"
            self.lost = f"the tracking store {key} did not answer for {waited} ({reason})"
            log.warning("%s; the run goes on, kept in %s", self.lost, self.path.parent)
        if self.lost is not None:
            backoff = self.heartbeat_s  # gave up: try again now and then
        else:
            backoff = min(MAX_BACKOFF_S, 0.5 + (now - self.outage_since) / 2)
        self.retry_at = now + backoff


def fsync_if_grown(path: Path, synced: int) -> int:
    """Make a journal durable if it grew since ``synced`` bytes; return its size now."""
    try:
        size = path.stat().st_size
        if size > synced:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return size
    except OSError:
        return synced
