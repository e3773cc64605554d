"""A one-line progress display for long runs, shown only on a terminal.

On a terminal the line is redrawn in place at most twice a second; when output goes to a
file or a pipe (CI, a cluster job's log) nothing is written, so logs are not flooded.
"""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """Progress of a loop of ``total`` steps, e.g. ``minimize  12,000/50,000  24%  loss=-11.9``.

    Args:
        total: the number of steps.
        label: what is progressing.
        stream: where to draw; standard error by default.
        interval_s: the least time between two redraws.
        min_total: loops shorter than this are too quick to need a display.
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: IO[str] | None = None,
        interval_s: float = 0.5,
        min_total: int = 1000,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.enabled = total >= min_total and _is_terminal(self.stream)
        self._next_draw = time.monotonic() + interval_s
        self._drawn = False

    def update(self, done: int, **values: float) -> None:
        """Report ``done`` steps finished; cheap when nothing is drawn."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next_draw and done < self.total:
            return
        self._next_draw = now + self.interval_s
        shown = "  ".join(f"{key}={value:.6g}" for key, value in values.items())
        percent = 100 * done // max(self.total, 1)
        line = f"{self.label}  {done:,}/{self.total:,}  {percent:3d}%  {shown}"
        self.stream.write("\r" + line[:200] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line so that the next output starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
