"""What a sweep shares with its jobs through its directory: its parent run and its names.

The launching process writes, before any job starts, the parent run's id (``parent_run_id``)
and the keys the sweep varies (``swept_keys.json``), and when a signal stops it, ``stopped``.
A job reads them (:func:`parent_of`) in whatever process or host it runs, names its run by
what the sweep varies and hangs it under the parent.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from experiments import signals
from experiments.names import without_tags
from experiments.record import journal

PARENT_FILE = "parent_run_id"
SWEPT_FILE = "swept_keys.json"  # the keys whose values vary across the sweep's jobs
STOPPED_FILE = "stopped"  # written when a signal stops the sweep: jobs not started stay so


@dataclass
class Parent:
    """The sweep's parent run, as a job finds it in the sweep directory."""

    run_id: Optional[str] = None  # None when the sweep is kept offline
    journal_id: Optional[str] = None
    swept: Optional[list[str]] = None  # the keys the sweep varies, in command-line order

    def child_name(self, overrides: list[str]) -> Optional[str]:
        """A job's run name: what varies in the sweep (``optim=adam lr=0.1``).

        What is fixed for the whole sweep is in the parent's name. None when this sweep
        varies nothing the job's overrides show (the runner's default name then).
        """
        if not self.swept:
            return None
        values = {o.key_or_group: item.split("=", 1)[1] for o, item in _parsed(overrides)}
        shown = [key for key in self.swept if key in values]
        if not shown:
            return None
        ends = [key.rsplit(".", 1)[-1] for key in shown]
        # two keys ending alike (task.init.x, task.at.x) keep their whole paths
        labels = [end if ends.count(end) == 1 else key for key, end in zip(shown, ends)]
        return " ".join(f"{label}={values[key]}" for label, key in zip(labels, shown))[:250]


def swept_keys(overrides: list[str], sweeper_params: Any) -> list[str]:
    """The keys a sweep varies: its command line's sweeps (``optim.lr=0.1,0.01``), then
    those of ``hydra.sweeper.params`` the command line did not replace with one value."""
    given = _parsed(overrides)
    swept = [o.key_or_group for o, _ in given if o.is_sweep_override()]
    named = {o.key_or_group for o, _ in given}
    preset = [f"{key}={value}" for key, value in dict(sweeper_params or {}).items()]
    swept += [
        o.key_or_group
        for o, _ in _parsed(preset)
        if o.key_or_group not in named and o.is_sweep_override()
    ]
    return swept


def _parsed(items: list[str]) -> list[tuple[Any, str]]:
    """Each override Hydra's grammar parses, with its text; the others are left out."""
    parser = OverridesParser.create()
    found = []
    for item in items:
        try:
            found.append((parser.parse_override(item), item))
        except HydraException:
            continue
    return found


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The id of the parent run of the sweep writing into ``sweep_dir``, if it has one."""
    try:
        return Path(sweep_dir, PARENT_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def parent_of(sweep_dir: str | Path) -> Parent:
    """The parent of a job of the sweep in ``sweep_dir``.

    Raises:
        signals.Interrupted: the sweep was stopped by a signal before this job started.
    """
    stopped = Path(sweep_dir, STOPPED_FILE)
    if stopped.exists():
        reason = stopped.read_text(encoding="utf-8").strip() or "the sweep was stopped"
        raise signals.Interrupted(signal.SIGTERM, f"not started: {reason}")
    try:
        journal_id = journal.read_header(Path(sweep_dir, journal.NAME)).journal_id
    except journal.JournalError:
        journal_id = None
    try:
        swept = json.loads(Path(sweep_dir, SWEPT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        swept = None
    return Parent(parent_run_id(sweep_dir), journal_id, swept)


def sweep_name(experiment: str | None, overrides: list[str]) -> str:
    """The parent run's name: the named sweep, or the command line's overrides."""
    if experiment:
        return f"sweep {experiment}"
    return " ".join(["sweep", *without_tags(overrides)])[:250]
