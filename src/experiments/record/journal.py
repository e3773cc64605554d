"""The run journal: every record of a run, appended to a file in the run's own directory.

A run never writes to MLflow directly. Its recorder appends each record (params, tags,
metric points, artifacts, the end status) to the journal, and an uploader
(:mod:`.store.upload`) turns the journal into MLflow calls, while the run goes on or later
with ``python -m experiments.sync``. Whatever happens to the process or to the tracking
store, what was recorded is on disk.

Format, version 1 (documented in docs/faults.md; readable without this package):

- JSON Lines, UTF-8: one JSON object per line, each ending in ``\\n``, in the order the run
  recorded them. Every object has ``type`` and ``time`` (milliseconds since the epoch).
- The first line is the ``header``: ``format`` (``experiments-journal``), ``version`` (1),
  ``journal_id``, ``tracking_uri`` (without any password), ``experiment``, ``run_name``,
  ``parent_run_id``, ``parent_journal``, ``config_hash``, ``output_dir``, ``host``,
  ``pid``, ``pid_started``, ``offline``, and for an attempt that continues a run from its
  checkpoint, ``resumes`` (the run's id, where known) and ``first`` (its first journal's id).
- ``run``: ``run_id`` and ``experiment_id``, once the store has created the run.
- ``params``: ``params``, a mapping of strings. ``tags``: ``tags``, a mapping of strings.
- ``metrics``: ``step`` and ``values``, a mapping of metric name to number (or one of the
  strings ``NaN``, ``Infinity``, ``-Infinity``).
- ``artifact``: ``file`` (relative to the journal's directory, or absolute) and ``dir``, the
  artifact directory in the run (null: the top).
- ``end``: ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``) and ``error`` (the reason, or
  null). A journal without an ``end`` line belongs to a run still going or one that crashed.

Each record is handed to the operating system as it is made (one ``write`` per record), so
a process killed with SIGKILL loses none; a line cut short by a crash of the machine is
skipped with a warning when the journal is read. The writer holds an exclusive ``flock`` on
the file while the run is open: a journal that nobody holds and that has no ``end`` line
belongs to a run whose process is gone.

How journals are locked, the one rule (:func:`lock_for_writing`, :func:`held`): the writer
takes an **exclusive** lock on the file it opened for writing; whoever asks whether a journal
is held takes a **shared** lock on the file opened for reading, and lets it go. Local
filesystems give ``flock`` its own semantics; Linux's NFS client emulates it with byte-range
locks, where an exclusive lock needs the file open for writing and a shared one open for
reading, which this rule satisfies (Lustre and GPFS honour ``flock`` where mounted with it).
Byte-range locks belong to a process and any ``close`` of the file in that process drops
them, so a process never opens a second time a journal it is writing: it knows it holds it
(:func:`held`), and it reads it (:func:`read_header`, :func:`read`, :func:`last_record`: a
sweep's job in the launching process reads its parent's header) through the writer's own
descriptor. Where locks do not work at all, :func:`held` answers None and callers fall back
on the writer's pid and the journal's age.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

FORMAT = "experiments-journal"
VERSION = 1
NAME = "journal.jsonl"
_NAME_PATTERN = re.compile(r"^journal(-\d+)?\.jsonl$")
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_lock = fcntl.flock  # how journals are locked (see the module's rule)
_written_here: dict[str, Writer] = {}  # journals this process writes now: never reopened


class JournalError(Exception):
    """A file that is not a journal this version can read (the message names the file)."""


def now_ms() -> int:
    """The time in milliseconds since the epoch, as MLflow records it."""
    return int(time.time() * 1000)


@dataclass
class Header:
    """The first line of a journal: where its run goes and who writes it."""

    tracking_uri: str
    experiment: str
    run_name: str
    config_hash: Optional[str] = None
    parent_run_id: Optional[str] = None
    parent_journal: Optional[str] = None
    output_dir: Optional[str] = None
    host: str = ""
    place: Optional[str] = None  # liveness.place(): where ``pid`` means the writer
    pid: int = 0
    pid_started: Optional[float] = None
    offline: bool = False
    note: Optional[str] = None  # the run's description; "{run_id}" becomes its id
    resumes: Optional[str] = None  # the run this journal continues (an attempt after the first)
    first: Optional[str] = None  # that run's first journal (its checkpoints are named by it)
    journal_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: int = field(default_factory=now_ms)

    def record(self) -> dict[str, Any]:
        """The header as the journal's first line."""
        return {"type": "header", "format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], path: Path) -> Header:
        if record.get("type") != "header" or record.get("format") != FORMAT:
            raise JournalError(f"{path}: not a journal (its first line is not a journal header)")
        if record.get("version") != VERSION:
            raise JournalError(
                f"{path}: journal version {record.get('version')!r}; this version of "
                f"experiments reads version {VERSION}"
            )
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in record.items() if key in known})


def new_path(directory: str | Path) -> Path:
    """A fresh journal path in ``directory``: ``journal.jsonl``, else ``journal-2.jsonl``, ...

    A directory holds several journals when several runs used it (a requeued Slurm job, or a
    script calling the runner twice with one output directory).
    """
    directory = Path(directory)
    path, number = directory / NAME, 1
    while path.exists():
        number += 1
        path = directory / f"journal-{number}.jsonl"
    return path


def find(paths: Iterable[str | Path]) -> list[Path]:
    """Every journal file under ``paths`` (files or directories), sorted by path."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("journal*.jsonl") if _NAME_PATTERN.match(p.name))
    return sorted(found)


class Writer:
    """Appends records to a new journal; one ``write`` system call per record.

    Args:
        path: the journal to create (see :func:`new_path`); it must not exist.
        header: written as the first line.
    """

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        # Open for reading too: this process reads the journal through this descriptor.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        lock_for_writing(self._fd)
        _written_here[os.path.abspath(path)] = self
        self._dirty = False
        self._lock = threading.Lock()  # the task and the uploading thread both append
        self.closed = False
        self.ended = False  # nothing follows the end line
        self.append(header.record())

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (a mapping with ``type``); ``time`` is added when missing.

        Raises:
            OSError: the journal is closed, or the disk refused the write.
        """
        if "time" not in record:
            record = {**record, "time": now_ms()}
        line = encode(record)
        with self._lock:
            if self.closed or self.ended:
                raise OSError(f"{self.path}: the journal is closed")
            os.write(self._fd, line)
            self._dirty = True
            self.ended = record.get("type") == "end"

    def write_line(self, line: bytes) -> None:
        """Write one record already encoded as a journal line (see :func:`encode`)."""
        with self._lock:
            if self.closed or self.ended:
                raise OSError(f"{self.path}: the journal is closed")
            os.write(self._fd, line)
            self._dirty = True

    def sync(self) -> None:
        """Make what was written survive a crash of the machine, not only of the process."""
        with self._lock:
            if self._dirty and not self.closed:
                self._dirty = False
                os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close; releases the lock that marks the run as still being written."""
        with self._lock:
            if not self.closed:
                if self._dirty:
                    os.fsync(self._fd)
                self.closed = True
                os.close(self._fd)
                _written_here.pop(os.path.abspath(self.path), None)


def encode(record: Mapping[str, Any]) -> bytes:
    """One record as a journal line (compact JSON; non-finite metric values as strings)."""
    if record.get("type") == "metrics":
        values = record["values"]
        if not all(math.isfinite(value) for value in values.values()):
            record = {**record, "values": {k: _finite_or_name(v) for k, v in values.items()}}
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


def metric_value(value: float | str) -> float:
    """A metric value as read from a journal: numbers as they are, the special names decoded."""
    return _SPECIAL[value] if isinstance(value, str) else float(value)


def _finite_or_name(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass
class Chunk:
    """Records read from a journal, and where the next read starts."""

    records: list[dict[str, Any]]
    end: int
    skipped: list[str]
    at_end: bool = True  # the read reached the end of the file as it was then


def read(path: Path, offset: int = 0, final: bool = False, limit: int = 4 << 20) -> Chunk:
    """Read whole records from byte ``offset`` on, at most about ``limit`` bytes.

    Args:
        path: the journal.
        offset: where the previous read ended (0: from the header).
        final: the writer is gone, so a last line without its newline was cut short by a
            crash: skip it (with a warning in ``skipped``) instead of waiting for the rest.
        limit: read about this many bytes (always at least one whole line).

    Returns:
        The records in order, the offset after the last line consumed, and a description of
        every line skipped because it was not valid JSON.
    """
    with _opened(path) as handle:
        handle.seek(offset)
        data = handle.read(limit)
        while data and b"\n" not in data:  # a line longer than the limit: read all of it
            more = handle.read(limit)
            if not more:
                break
            data += more
        at_end = handle.read(1) == b""
    complete = data[: data.rfind(b"\n") + 1]
    records, skipped = [], []
    position = offset
    for line in complete.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError("not a record")
            records.append(record)
        except ValueError:
            skipped.append(f"{path}: line at byte {position} is not a journal record; skipped")
        position += len(line) + 1
    end = offset + len(complete)
    rest = data[len(complete) :]
    if final and rest and at_end:
        skipped.append(f"{path}: the last line was cut short ({len(rest)} bytes); skipped")
        end += len(rest)
    return Chunk(records, end, skipped, at_end)


def read_header(path: Path) -> Header:
    """The header of a journal; :class:`JournalError` if the file is not a journal."""
    try:
        with _opened(path) as handle:
            first = handle.readline()
    except OSError as error:
        raise JournalError(f"{path}: cannot read the journal: {error.strerror}") from error
    try:
        record = json.loads(first)
    except ValueError:
        raise JournalError(f"{path}: not a journal (its first line is not JSON)") from None
    if not isinstance(record, dict):
        raise JournalError(f"{path}: not a journal (its first line is not a journal header)")
    return Header.from_record(record, path)


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The journal opened for reading; one this process writes is read through its writer's
    descriptor, never opened and closed a second time (the module's rule)."""
    writer = _written_here.get(os.path.abspath(path))
    if writer is not None:
        with writer._lock:  # no record is written, and the descriptor stays open, meanwhile
            if not writer.closed:
                yield _Positioned(writer._fd)
                return
    with open(path, "rb") as handle:
        yield handle


class _Positioned:
    """Reads a descriptor with a position of its own (``pread``), as a file read from does."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position}.get(whence)
        if base is None:  # SEEK_END
            base = os.fstat(self._fd).st_size
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, os.fstat(self._fd).st_size - self._position)
        data = os.pread(self._fd, size, self._position)
        self._position += len(data)
        return data

    def readline(self) -> bytes:
        line = b""
        while True:
            chunk = os.pread(self._fd, 65536, self._position + len(line))
            end = chunk.find(b"\n")
            if end >= 0:
                line += chunk[: end + 1]
                break
            line += chunk
            if not chunk:
                break
        self._position += len(line)
        return line


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every readable record of a journal, header first (for tools and tests)."""
    offset = 0
    while True:
        chunk = read(path, offset, final=True)
        yield from chunk.records
        if chunk.end == offset:
            return
        offset = chunk.end


def last_record(path: Path) -> dict[str, Any] | None:
    """The last whole record of a journal (an ``end`` line when its run was closed)."""
    try:
        with _opened(path) as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65536))
            tail = handle.read()
    except OSError:
        return None
    lines = tail[: tail.rfind(b"\n") + 1].split(b"\n")[:-1]
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def ended(path: Path) -> bool:
    """Whether the journal's run was closed (its last line is the ``end`` record)."""
    last = last_record(path)
    return last is not None and last.get("type") == "end"


def lock_for_writing(fd: int) -> None:
    """The writer's lock: exclusive, on the journal opened for writing (the module's rule)."""
    try:
        _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a filesystem without locks: readers fall back on the process and the time


def held(path: Path) -> bool | None:
    """Whether a writer holds the journal open: True, False, or None where locks do not work.

    A shared lock, asked for on the journal opened for reading (the module's rule).
    """
    if os.path.abspath(path) in _written_here:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        _lock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        _lock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
