"""A command's start-up without the cyclic garbage collector.

Loading torch, Hydra and torch's compiler creates hundreds of thousands of objects that
live as long as the process, and the collector's passes over them while they load cost
about a second of a short run's start-up. So the ``experiments`` command (and the
recording process) turns the collector off first thing (:func:`begin`); once start-up is
over (:func:`settle`) what was loaded is moved out of the collector's sight for good
(``gc.freeze``) and the collector comes back on. A process that did not call
:func:`begin` (a test, a library user, a sweep's worker) is left as it is.
"""

from __future__ import annotations

import gc

_paused = False


def begin() -> None:
    """Turn the collector off while this process loads what it needs."""
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
