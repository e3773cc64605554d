"""Checkpoints: a task's state, saved so that a run killed, stopped or requeued continues.

A task saves through ``ctx.checkpoints`` (:class:`Checkpoints`): ``save(step, state)`` with
``state`` a mapping of tensors, numbers, strings, lists and dicts (a model's and an
optimizer's ``state_dict()`` are such), ``due(step)`` when the settings' period says a
periodic one is due, ``latest()`` on start: the checkpoint to continue from (None for a
fresh run), the random generators put back as they were when it was saved.

On disk, in the run's ``checkpoints/`` (``checkpoint.dir``), each checkpoint is a directory
``step-<step>`` holding ``state.pt`` and ``manifest.json``. A checkpoint is committed, not
written: the files go into a temporary directory ``tmp-<id>``, each is flushed and fsynced,
the manifest (the step, the run, the config's hash, the state file's size and SHA-256) is
written last, then one rename makes it ``step-<step>`` and the directory is fsynced. A
process killed at any moment leaves the previous checkpoint as the latest; a temporary
directory left behind is removed at the next start. A reader trusts only a directory whose
manifest names a state file of that size and hash.

Loading runs no code from the file: ``torch.load(weights_only=True)`` reads tensors and
plain containers only (a pickle naming anything else is refused, and nothing of it runs).
numpy's and Python's generator states are kept as tensors and lists for that reason.

The writing happens on a thread of its own, off the task's loop (the state is serialised in
the task's thread first, so what is saved is the state at that step); at most one write is
in flight, and a stop or the run's end waits for it. Nothing here imports MLflow.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch

from experiments.errors import ConfigError, RunFailure

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
PREFIX = "step-"
TEMPORARY = "tmp-"
FORMAT = "experiments-checkpoint"
RNG_KEY = "__rng__"  # the random generators' states, beside the task's own


@dataclass
class Checkpoint:
    """A committed checkpoint, loaded.

    Attributes:
        step: the step it was saved at: the number of steps done (the next step to run).
        state: the task's state, as it was saved.
        path: its directory.
        manifest: its manifest (step, run, config hash, file size and hash, time).
    """

    step: int
    state: dict[str, Any]
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


class CheckpointError(RunFailure):
    """A checkpoint could not be written (the run fails with the reason)."""


class Checkpoints:
    """A run's checkpoints (``ctx.checkpoints``): see the module's docstring.

    Args:
        directory: where they are kept (created on the first save).
        every_steps: a periodic checkpoint every this many steps (None: not by steps).
        every_s: and every this many seconds (None: not by time).
        keep: how many are kept; older ones are removed once a newer one is committed.
        meta: what every manifest records besides the step (the run, the config's hash), or
            a function that says it when a checkpoint is saved.
        resume_from: the checkpoint to continue from (the runner's choice: a run continued,
            a requeued job's); None: a fresh run, whose ``latest()`` is None.
        generator: the task's own generator (``ctx.generator``), saved and put back too.
        committed: called with each checkpoint's directory once it is committed (the run
            records it in its store).
    """

    def __init__(
        self,
        directory: Path,
        every_steps: Optional[int] = None,
        every_s: Optional[float] = None,
        keep: int = 2,
        meta: Union[Mapping[str, Any], Callable[[], Mapping[str, Any]], None] = None,
        resume_from: Optional[Path] = None,
        generator: Optional[torch.Generator] = None,
        committed: Optional[Callable[[Path], None]] = None,
    ) -> None:
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.every_s = every_s
        self.keep = max(1, keep)
        self.meta = meta if callable(meta) else dict(meta or {})
        self.resume_from = resume_from
        self.generator = generator
        self.committed = committed
        self.resumed_step: Optional[int] = None  # the step latest() continued from
        self.saved_step: Optional[int] = None  # the step of the last save
        self._last_save = time.monotonic()
        self._writer: Optional[threading.Thread] = None
        self._failure: Optional[BaseException] = None
        clear_stale(self.directory)

    # --- the task's side ---

    def latest(self) -> Optional[Checkpoint]:
        """The checkpoint to continue from (None: start afresh), with the random
        generators (torch's, numpy's, Python's and ``ctx.generator``) put back as they were
        when it was saved."""
        if self.resume_from is None:
            return None  # a fresh run: it never takes up another's checkpoints
        found = load(self.resume_from)
        restore_rng(found.state.pop(RNG_KEY, None), self.generator)
        self.resumed_step = found.step
        self._last_save = time.monotonic()
        return found

    def due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due at ``step`` (``checkpoint.every_steps``,
        ``checkpoint.every_s``)."""
        if self.every_steps is not None and step > 0 and step % self.every_steps == 0:
            return True
        return self.every_s is not None and time.monotonic() - self._last_save >= self.every_s

    def save(self, step: int, state: Mapping[str, Any], wait: bool = False) -> None:
        """Save ``state`` as the checkpoint of ``step`` (the steps done so far).

        The state is serialised here, at once; writing it happens on a thread of its own
        (``wait``: here, before returning: what a stop does). A write that failed before
        fails this call, with the reason.
        """
        self._raise_failure()
        if step == self.saved_step:
            return  # saved already (a stop right after a periodic checkpoint)
        data = _serialise({**state, RNG_KEY: rng_state(self.generator)})
        self.wait()
        self._last_save = time.monotonic()
        self.saved_step = step
        meta = self.meta() if callable(self.meta) else self.meta
        manifest = {**meta, "step": int(step)}
        self._writer = threading.Thread(
            target=self._write, args=(step, data, manifest), name="checkpoint", daemon=True
        )
        self._writer.start()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise what it failed with."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        self._raise_failure()

    # --- the writer's side ---

    def _write(self, step: int, data: bytes, manifest: dict[str, Any]) -> None:
        try:
            path = commit(self.directory, step, data, manifest)
            prune(self.directory, self.keep)
            if self.committed is not None:
                self.committed(path)
        except BaseException as error:  # noqa: BLE001 - said by the next save or wait
            self._failure = error

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise CheckpointError(
                f"checkpoint.dir={self.directory}: the checkpoint could not be written: {failure}"
            ) from None


def check_directory(directory: Path) -> None:
    """Refuse a checkpoint directory that cannot be made or written, in one line."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".{TEMPORARY}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"checkpoint.dir={directory}: cannot write checkpoints there: {reason}"
        ) from None


def commit(directory: Path, step: int, data: bytes, manifest: Mapping[str, Any]) -> Path:
    """Write one checkpoint atomically (see the module); return its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"{TEMPORARY}{uuid.uuid4().hex}"
    temporary.mkdir()
    _write_synced(temporary / STATE_FILE, data)
    record = {
        "format": FORMAT,
        **manifest,
        "step": int(step),
        "file": STATE_FILE,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "time": time.time(),
    }
    _write_synced(temporary / MANIFEST_FILE, json.dumps(record, indent=1).encode())
    _fsync_directory(temporary)
    target = directory / f"{PREFIX}{int(step):012d}"
    if target.exists():  # the same step saved again (a resumed run's first save)
        shutil.rmtree(target)
    os.rename(temporary, target)
    _fsync_directory(directory)
    return target


def latest_path(directory: Path) -> Optional[Path]:
    """The newest committed checkpoint in ``directory`` whose files are whole, or None."""
    try:
        found = sorted((p for p in directory.iterdir() if p.name.startswith(PREFIX)), reverse=True)
    except OSError:
        return None
    for path in found:
        if manifest_of(path) is not None:
            return path
        log.warning("checkpoint %s is incomplete or damaged: the one before is used", path)
    return None


def manifest_of(path: Path) -> Optional[dict[str, Any]]:
    """A checkpoint's manifest, if it is whole: the state file of its size and hash."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        data = (path / str(manifest["file"])).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("format") != FORMAT or len(data) != manifest.get("bytes"):
        return None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None
    return manifest


def load(path: Path) -> Checkpoint:
    """A checkpoint, read as data (``torch.load(weights_only=True)``).

    Raises:
        ConfigError: it is not a whole checkpoint, or its state holds anything but
            tensors and plain containers (then nothing of it ran).
    """
    manifest = manifest_of(path)
    if manifest is None:
        raise ConfigError(f"{path}: not a whole checkpoint (no manifest, or its file differs)")
    try:
        state = torch.load(path / manifest["file"], map_location="cpu", weights_only=True)
    except Exception as error:  # refused by weights_only: it would have run code
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: refused, not plain data: {first}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: refused: its state is not a mapping")
    return Checkpoint(int(manifest["step"]), state, path, manifest)


def prune(directory: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest committed checkpoints."""
    found = sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def clear_stale(directory: Path) -> None:
    """Remove temporary directories a process killed mid-write left behind."""
    try:
        stale = [p for p in directory.iterdir() if p.name.startswith(TEMPORARY)]
    except OSError:
        return
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s: a checkpoint whose writing was cut short", path)


def rng_state(generator: Optional[torch.Generator] = None) -> dict[str, Any]:
    """torch's (CPU and each CUDA device), numpy's, Python's and ``generator``'s states,
    as tensors, numbers and lists (what ``weights_only`` loads)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "random": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: Optional[Mapping[str, Any]], generator: Optional[torch.Generator]) -> None:
    """Put the generators back as :func:`rng_state` found them (nothing: leave them)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (saved["kind"], keys, saved["position"], saved["has_gauss"], saved["cached"])
    )
    saved_random = state["random"]
    random.setstate(
        (saved_random["version"], tuple(saved_random["internal"]), saved_random["gauss"])
    )
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _serialise(state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
