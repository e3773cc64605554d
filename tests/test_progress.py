"""The progress line: drawn on a terminal, silent in logs and pipes."""

from __future__ import annotations

import io

from experiments.tasks.minimize.progress import Progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as a TTY-attached stderr does."""

    def isatty(self) -> bool:
        return True


def test_draws_in_place_on_a_terminal_and_ends_the_line() -> None:
    stream = Terminal()
    progress = Progress(5000, "minimize", stream=stream, interval_s=0.0)
    for done in range(1, 5001):
        progress.update(done, loss=1.0 / done)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\rminimize  1/5,000    0%  loss=1")
    assert "minimize  5,000/5,000  100%  loss=0.0002" in text
    assert text.endswith("\n") and text.count("\n") == 1


def test_redraws_at_most_once_per_interval() -> None:
    stream = Terminal()
    progress = Progress(100_000, "minimize", stream=stream, interval_s=60.0)
    for done in range(1, 100_001):
        progress.update(done)
    assert stream.getvalue().count("\r") == 1  # only the final state, forced at the end


def test_silent_when_not_a_terminal_or_short() -> None:
    piped = io.StringIO()
    progress = Progress(50_000, "minimize", stream=piped, interval_s=0.0)
    for done in range(1, 50_001):
        progress.update(done)
    progress.close()
    short = Terminal()
    Progress(20, "minimize", stream=short, interval_s=0.0).update(20)
    assert piped.getvalue() == "" and short.getvalue() == ""
