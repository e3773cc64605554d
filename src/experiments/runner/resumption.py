"""Which run a run continues, and from which checkpoint.

A run continues an earlier one, the same MLflow run, from the checkpoint its task saved:

- when asked (``resume.run``: ``python -m experiments.resume RUN_ID`` sets it, a search
  continuing a trial it abandoned too), from ``resume.checkpoint`` or the run's own
  checkpoints;
- by itself, when its directory holds an earlier attempt at the same config that did not
  finish and left a checkpoint: a Slurm job requeued after its time limit or a preemption
  runs again in its own directory;
- with ``skip_existing=true``, when the store holds such a run of the same config that did
  not finish (the recording process finds it: :meth:`Tracker.resumable_run`).

``resume.new_run=true`` starts a new run from a checkpoint instead, tagged with the run and
the step it came from. A checkpoint made with another config is refused, in one line. The
checkpoints of a run are kept in ``checkpoints/`` in its directory, or, where
``checkpoint.dir`` names a directory, in ``<that directory>/<config hash>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments import checkpoints, config
from experiments.errors import ConfigError
from experiments.record import journal, marks
from experiments.record.journal import Header

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class Resumption:
    """How a run continues an earlier one.

    Attributes:
        run_id: the run it continues (None: a new run from ``checkpoint``, or one whose id
            the store will say, ``skip_existing``).
        checkpoint: the checkpoint to continue from (None: the latest in the run's
            checkpoint directory, if any).
        new_run: a new run, started from ``checkpoint``.
        drain: the earlier attempts' journals here, uploaded before the run is reopened.
        earlier: the earlier attempt's journal id (how a journal kept offline names it).
        why: what asked for it, for the log line.
    """

    run_id: Optional[str]
    checkpoint: Optional[Path] = None
    new_run: bool = False
    drain: list[str] = field(default_factory=list)
    earlier: Optional[str] = None
    why: str = ""


def checkpoint_dir(settings: config.Config, journal_id: str, directory: Path) -> Path:
    """Where a run's checkpoints are kept: ``checkpoints/`` in its directory, or a directory
    of its own (named by its first journal) in ``checkpoint.dir``."""
    chosen = settings.checkpoint.dir
    if chosen:
        return Path(chosen).expanduser().resolve() / journal_id
    return directory.resolve() / CHECKPOINTS_DIR


def plan(
    settings: config.Config, identity: str, directory: Path, header: Header
) -> Optional[Resumption]:
    """The run to continue (see the module), or None: a fresh run.

    Raises:
        ConfigError: ``resume.*`` names a checkpoint that is not there, or one made with
            another config (unless ``resume.new_run`` asks for a new run from it).
    """
    asked = settings.resume
    if asked.run is not None or asked.checkpoint is not None:
        checkpoint = _checkpoint(asked.checkpoint) if asked.checkpoint else None
        if checkpoint is not None and not asked.new_run:
            try:
                _same_config(checkpoint, identity)
            except ConfigError as error:
                if not asked.else_fresh:
                    raise
                log.info("%s: a fresh run instead (resume.else_fresh)", error)
                return None
        if asked.new_run:
            return Resumption(None, checkpoint, new_run=True, why=f"resume.run={asked.run}")
        drain = [str(p) for p in _attempts(directory, header, asked.run)]
        return Resumption(asked.run, checkpoint, drain=drain, why=f"resume.run={asked.run}")
    return _requeued(settings, identity, directory, header)


def _requeued(
    settings: config.Config, identity: str, directory: Path, header: Header
) -> Optional[Resumption]:
    """An earlier attempt in this directory at this config that did not finish and left a
    checkpoint: a requeued job's."""
    for path in reversed(sorted(directory.glob("journal*.jsonl"), key=_mtime)):
        try:
            earlier = journal.read_header(path)
        except journal.JournalError:
            continue
        if earlier.config_hash != identity:
            continue
        end = journal.last_record(path) or {}
        if end.get("type") == "end" and end.get("status") == "FINISHED":
            return None  # it finished: a fresh run, as before (retry_of)
        first = earlier.first or earlier.journal_id
        found = checkpoints.latest_path(checkpoint_dir(settings, first, directory))
        if found is None:
            return None  # nothing saved: a fresh run, as before (retry_of)
        run = next((r for r in journal.records(path) if r.get("type") == "run"), None)
        run_id = (run or {}).get("run_id") or marks.State.load(path, header.tracking_uri).run_id
        drain = [str(p) for p in _attempts(directory, header, run_id)] if run_id else [str(path)]
        return Resumption(run_id, found, drain=drain, earlier=first, why="a requeued job")
    return None


def recorded_in(paths: list[str]) -> dict[str, int]:
    """By metric, the last step the journals ``paths`` recorded: what an attempt that
    continues their run must not record again (where the store cannot say: kept offline)."""
    steps: dict[str, int] = {}
    for path in paths:
        for record in journal.records(Path(path)):
            if record.get("type") == "metrics":
                step = int(record.get("step", 0))
                for key in record["values"]:
                    steps[key] = max(step, steps.get(key, step))
    return steps


def _attempts(directory: Path, header: Header, run_id: Optional[str]) -> list[Path]:
    """The journals in ``directory`` that recorded ``run_id``."""
    found = []
    for path in sorted(directory.glob("journal*.jsonl"), key=_mtime):
        run = next((r for r in journal.records(path) if r.get("type") == "run"), None)
        state = marks.State.load(path, header.tracking_uri)
        if run_id is not None and run_id in ((run or {}).get("run_id"), state.run_id):
            found.append(path)
    return found


def _checkpoint(text: str) -> Path:
    """The checkpoint ``resume.checkpoint`` names: a checkpoint, or a directory of them."""
    path = Path(text).expanduser()
    if checkpoints.manifest_of(path) is not None:
        return path
    latest = checkpoints.latest_path(path)
    if latest is None:
        raise ConfigError(f"resume.checkpoint={text}: no whole checkpoint there")
    return latest


def _same_config(checkpoint: Path, identity: str) -> None:
    made = (checkpoints.manifest_of(checkpoint) or {}).get("config_hash")
    if made is not None and made != identity:
        raise ConfigError(
            f"resume.checkpoint={checkpoint}: made with another config (config.hash {made}, "
            f"this run's {identity}); resume.new_run=true starts a new run from it"
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def describe(resumption: Resumption, step: Optional[int]) -> dict[str, Any]:
    """The tags a continued run gets: the step it continued from, or where it came from."""
    tags: dict[str, Any] = {}
    if step is not None:
        tags["resumed_from"] = str(step)
    if resumption.new_run and resumption.checkpoint is not None:
        manifest = checkpoints.manifest_of(resumption.checkpoint) or {}
        if manifest.get("run_id"):
            tags["resumed_from_run"] = str(manifest["run_id"])
    return tags
