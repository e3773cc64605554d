"""What a search tells its sweep's summary: ``search.json`` in the sweep directory.

The sweep's callback reads it (without Optuna): the study, where it is kept, how many
trials it held before this search began, and how many it should hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from experiments.names import STUDY_TAG

SEARCH_FILE = "search.json"


def write(
    sweep_dir: Path,
    study: str,
    storage: str,
    held: int,
    n_trials: int,
    best: Optional[dict[str, Any]] = None,
    figures: Optional[list[str]] = None,
) -> None:
    """Say which study this sweep searches, what it held before; at the end, its best trial
    and the figures drawn of it (paths in the sweep directory)."""
    note = {"study": study, "storage": storage, "held": held, "n_trials": n_trials}
    if best is not None:
        note["best"] = best
    note["figures"] = list(figures or [])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SEARCH_FILE).write_text(json.dumps(note), encoding="utf-8")


def read(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """The note of the search this sweep ran, or None (not a search, or it did not begin)."""
    try:
        note = json.loads((sweep_dir / SEARCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def line(note: dict[str, Any]) -> str:
    """The summary's line about the study."""
    held = int(note.get("held", 0))
    return (
        f"study {note.get('study')!r} in {note.get('storage')}: it held {held} "
        f"trial{'' if held == 1 else 's'} before this search, n_trials={note.get('n_trials')}"
    )


def complete(note: Optional[dict[str, Any]]) -> bool:
    """Whether the study already held its n_trials: a search with nothing left to run."""
    return note is not None and int(note.get("held", 0)) >= int(note.get("n_trials", 1))


def tags(note: dict[str, Any]) -> dict[str, str]:
    """The parent run's tags of its search: the study, where, what it held before, and its
    best trial (of the whole study: perhaps of an earlier search)."""
    found = {
        STUDY_TAG: str(note.get("study"))[:250],
        "search.storage": str(note.get("storage"))[:250],
        "search.held_before": str(note.get("held")),
    }
    best = note.get("best")
    if isinstance(best, dict):
        found["search.best_trial"] = str(best.get("trial"))
        found["search.best_value"] = str(best.get("value"))
        found["search.best_params"] = json.dumps(best.get("params"), sort_keys=True)[:5000]
    return found
