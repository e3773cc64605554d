"""Drawing the figures a live run pickled into its journal's directory.

A task's figure takes a tenth of a second or more to draw; the run's process pickles it
(a few milliseconds) and the recording process draws it, store or no store, so a run whose
store is gone still gets its pictures. Only the recording process the run itself started
draws: unpickling runs code, so it is done only by the process that knows the files came
from its own run. An upload after the fact (``sync``) reports a figure never drawn as a
missing artifact instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from experiments.record.recorder import FIGURE_DPI

log = logging.getLogger(__name__)


def draw_figures(path: Path, offset: int, final: bool) -> int:
    """Draw the figures a live run pickled (its ``artifact`` lines with ``figure``).

    Only the recording process the run itself started calls this: unpickling runs code, so
    it is done only by the process that knows the files came from its own run. An upload
    after the fact (``sync``) reports a figure never drawn as a missing artifact instead.
    Drawing does not need the store: a run whose store is gone still gets its pictures.

    Args:
        path: the journal.
        offset: where the previous call stopped.
        final: the run has ended (its journal is complete).

    Returns:
        Where the next call starts.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.split(b"\n"):
        if b'"figure"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") == "artifact":
            draw(path, record)
    return offset + len(complete) if not final else offset + len(data)


def draw(path: Path, record: dict[str, Any]) -> None:
    """Draw one pickled figure of the journal at ``path`` into its file, unless done."""
    import pickle

    pickled, target = path.parent / record["figure"], path.parent / record["file"]
    if target.is_file() or not pickled.is_file():
        return
    try:
        figure = pickle.loads(pickled.read_bytes())
        figure.savefig(target, dpi=FIGURE_DPI)
    except Exception as error:  # a broken figure is a missing picture, not a lost run
        log.warning("%s: could not draw %s: %s", path, target.name, error)
        return
    pickled.unlink()


def warm_up() -> None:
    """Load what drawing a figure needs (matplotlib, its fonts) while the run still starts.

    The run's process imports torch and composes its config meanwhile, so this is free;
    left for the end, it would add some 0.5 s to every run's close.
    """
    import io

    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    axes = figure.add_subplot()
    axes.set_title("0.1")
    axes.set_yscale("log")  # its tick labels are mathtext, whose first use is slow
    axes.plot([1, 2], [0.01, 10])
    figure.savefig(io.BytesIO(), format="png", dpi=10)
