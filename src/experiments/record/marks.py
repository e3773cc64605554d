"""The upload mark of a journal: how far it has reached a store, kept beside it.

``journal.uploaded.json`` next to ``journal.jsonl`` says which run of which store the journal
goes to and the byte offset up to which the store has it. The run's own process reads it
(a job run again in its directory links to the earlier run), the uploader moves it forward,
``sync`` reads it to skip what is done. Nothing here imports MLflow.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


def state_path(path: Path) -> Path:
    """Where the upload mark of journal ``path`` is kept: ``journal.uploaded.json``."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".uploaded.json")


@dataclass
class State:
    """How far a journal has reached a store.

    Attributes:
        tracking_uri: the store this mark is about; a mark for another store is ignored.
        run_id: the run the journal goes to.
        offset: the journal's bytes before this offset are in the store.
        ended: the run's end (its status) is in the store.
    """

    tracking_uri: str
    run_id: Optional[str] = None
    experiment_id: Optional[str] = None
    offset: int = 0
    ended: bool = False
    uploader: Optional[str] = None  # host:pid of the process that sent it last

    @classmethod
    def load(cls, path: Path, tracking_uri: str) -> State:
        """The saved mark of journal ``path`` for this store, or a fresh one."""
        try:
            saved = json.loads(state_path(path).read_text(encoding="utf-8"))
            if saved.get("tracking_uri") == tracking_uri:
                return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return cls(tracking_uri)

    def save(self, path: Path) -> None:
        """Write the mark next to the journal, atomically."""
        target = state_path(path)
        self.uploader = f"{socket.gethostname()}:{os.getpid()}"
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        temporary.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(temporary, target)
