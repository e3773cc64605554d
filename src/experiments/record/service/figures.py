"""Drawing the figures of the live run this process serves.

A task's figure takes a tenth of a second or more to draw; the run's process pickles it (a
few milliseconds) and sends it over its pipe to its recording process, which draws it into
the run's directory, store or no store. Unpickling runs code, so a pickle is read from that
pipe only: never from a file, a journal or a shared directory, so a journal adopted from
another host or synced later cannot run anything here, and it names matplotlib's classes
alone (``record.pictures``: a figure holding a task's own is drawn in the run's process). A
figure the recording process never got (it died first) is a missing artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path

from experiments.record import pictures
from experiments.record.recorder import FIGURE_DPI

log = logging.getLogger(__name__)


def draw(target: Path, pickled: bytes) -> None:
    """Draw a figure the run's process sent (pickled, over the pipe) into ``target``."""
    try:
        # From the process this one serves, and only from it; matplotlib's globals alone.
        figure = pictures.load(pickled)
        figure.savefig(target, dpi=FIGURE_DPI)
    except Exception as error:  # a broken figure is a missing picture, not a lost run
        log.warning("could not draw %s: %s", target, error)


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
