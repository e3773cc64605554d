"""The run journal: its format, what survives a crash, and what a reader skips."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.record import journal
from experiments.record.journal import Header, JournalError, Writer


def header(**changes) -> Header:
    values = {"tracking_uri": "sqlite:////tmp/x.db", "experiment": "e", "run_name": "r"}
    return Header(**{**values, **changes})


def test_records_are_json_lines_readable_without_this_package(tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, header(config_hash="abc"))
    writer.append({"type": "params", "params": {"optim.lr": "0.1"}})
    writer.append({"type": "metrics", "step": 3, "values": {"loss": 1.5, "bad": math.nan}})
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["header", "params", "metrics", "end"]
    assert lines[0]["format"] == "experiments-journal" and lines[0]["version"] == 1
    assert lines[0]["config_hash"] == "abc" and lines[0]["journal_id"]
    assert all(isinstance(line["time"], int) for line in lines)
    assert lines[2]["values"] == {"loss": 1.5, "bad": "NaN"}  # strict JSON, no NaN token
    assert journal.metric_value("NaN") != journal.metric_value("NaN")
    assert journal.metric_value("-Infinity") == -math.inf


def test_each_record_reaches_the_file_at_once_and_nothing_follows_the_end(tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, header())
    writer.append({"type": "metrics", "step": 0, "values": {"loss": 1.0}})
    assert path.read_text().count("\n") == 2  # no buffering: a SIGKILL now loses nothing
    writer.append({"type": "end", "status": "KILLED", "error": "terminated (SIGTERM)"})
    with pytest.raises(OSError, match="closed"):
        writer.append({"type": "tags", "tags": {"heartbeat": "late"}})
    writer.close()
    assert journal.ended(path)
    assert journal.last_record(path)["error"] == "terminated (SIGTERM)"


def test_a_line_cut_short_by_a_crash_is_skipped_with_a_warning(tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, header())
    writer.append({"type": "metrics", "step": 0, "values": {"loss": 1.0}})
    writer.close()
    with open(path, "ab") as handle:
        handle.write(b'not json\n{"type":"metrics","step":1,"val')  # garbage, then a cut line
    waiting = journal.read(path)  # the writer may still finish that line: wait for it
    assert [r["type"] for r in waiting.records] == ["header", "metrics"]
    assert len(waiting.skipped) == 1 and "not a journal record" in waiting.skipped[0]
    assert waiting.end < path.stat().st_size
    final = journal.read(path, final=True)  # the writer is gone: the cut line is skipped
    assert final.end == path.stat().st_size
    assert any("cut short" in warning for warning in final.skipped)
    assert [r["step"] for r in journal.records(path) if r["type"] == "metrics"] == [0]


def test_reading_in_chunks_resumes_where_it_stopped(tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, header())
    for step in range(500):
        writer.append({"type": "metrics", "step": step, "values": {"loss": float(step)}})
    writer.close()
    offset, steps = 0, []
    while True:
        chunk = journal.read(path, offset, limit=1000)
        steps += [r["step"] for r in chunk.records if r["type"] == "metrics"]
        if chunk.end == offset:
            break
        offset = chunk.end
    assert steps == list(range(500))


def test_a_directory_used_twice_gets_a_second_journal(tmp_path) -> None:
    first = journal.new_path(tmp_path)
    Writer(first, header()).close()
    second = journal.new_path(tmp_path)
    assert (first.name, second.name) == ("journal.jsonl", "journal-2.jsonl")
    Writer(second, header()).close()
    (tmp_path / "job").mkdir()
    Writer(journal.new_path(tmp_path / "job"), header()).close()
    (tmp_path / "journal.uploaded.json").write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in journal.find([tmp_path])] == [
        "job/journal.jsonl",
        "journal-2.jsonl",
        "journal.jsonl",
    ]


@pytest.mark.parametrize(
    ("first_line", "match"),
    [
        (b"hello\n", "not a journal"),
        (b'{"type": "header", "format": "something-else"}\n', "not a journal"),
        (b'{"type": "header", "format": "experiments-journal", "version": 9}\n', "version 9"),
    ],
)
def test_a_file_that_is_not_a_journal_is_refused_by_name(tmp_path, first_line, match) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(first_line)
    with pytest.raises(JournalError, match=match) as raised:
        journal.read_header(path)
    assert str(path) in str(raised.value)


def test_the_writer_holds_the_journal_until_it_closes(tmp_path) -> None:
    path = tmp_path / journal.NAME
    writer = Writer(path, header())
    assert journal.held(path) is True
    writer.close()
    assert journal.held(path) is False


def test_a_killed_writer_releases_the_journal(tmp_path) -> None:
    path = tmp_path / journal.NAME
    code = (
        "import sys, time\n"
        "from experiments.record.journal import Header, Writer\n"
        "w = Writer(__import__('pathlib').Path(sys.argv[1]), "
        "Header(tracking_uri='x', experiment='e', run_name='r'))\n"
        "w.append({'type': 'metrics', 'step': 0, 'values': {'loss': 1.0}})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    assert journal.held(path) is True
    process.kill()
    process.wait()
    assert journal.held(path) is False
    assert not journal.ended(path)  # a run that crashed: no end line
    assert [r["type"] for r in journal.records(path)] == ["header", "metrics"]
    assert os.stat(path).st_size > 0


NFS_WRITER = """
import fcntl, sys, time
from pathlib import Path
from experiments.record import journal
journal._lock = fcntl.lockf  # byte-range locks, as Linux's NFS client makes of flock
header = journal.Header(tracking_uri="x", experiment="e", run_name="r")
w = journal.Writer(Path(sys.argv[1]), header)
print("ready", flush=True)
time.sleep(60)
"""


def test_journals_are_locked_as_nfs_allows(tmp_path, monkeypatch) -> None:
    # Linux's NFS client turns flock into byte-range locks: an exclusive one needs the file
    # open for writing, a shared one open for reading. fcntl.lockf makes the same calls here.
    import fcntl

    monkeypatch.setattr(journal, "_lock", fcntl.lockf)
    path = tmp_path / journal.NAME
    writer = subprocess.Popen(
        [sys.executable, "-c", NFS_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        assert journal.held(path) is True
        assert journal.held(path) is True  # asking twice, or from two readers, is harmless
        # What asking with an exclusive lock on a file opened for reading gets there:
        fd = os.open(path, os.O_RDONLY)
        with pytest.raises(OSError) as refused:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert not isinstance(refused.value, BlockingIOError)  # EBADF: no answer at all
    finally:
        writer.kill()
        writer.wait()
    assert journal.held(path) is False


def held_elsewhere(path: Path) -> subprocess.CompletedProcess:
    """Ask another process, locking as NFS does (byte-range locks), whether ``path`` is held;
    it prints True or False."""
    probe = (
        "import fcntl, sys\n"
        "from experiments.record import journal\n"
        "journal._lock = fcntl.lockf\n"
        "print(journal.held(sys.argv[1]))\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)


def test_a_process_never_probes_the_journal_it_writes(tmp_path, monkeypatch) -> None:
    # With byte-range locks, closing any descriptor of a file drops the process's lock on it.
    import fcntl

    monkeypatch.setattr(journal, "_lock", fcntl.lockf)
    path = tmp_path / journal.NAME
    writer = Writer(path, header())
    assert journal.held(path) is True
    other = held_elsewhere(path)
    assert other.stdout.strip() == "True", other.stderr  # the lock is still there
    writer.close()
    assert journal.held(path) is False


def test_a_sweep_job_reads_its_parents_journal_without_dropping_its_lock(
    tmp_path, monkeypatch
) -> None:
    # An in-process sweep's job reads the header of the parent's journal, which this same
    # process writes: with byte-range locks (NFS), opening and closing it would drop the lock.
    import fcntl

    from experiments.sweeps.parent import parent_of

    monkeypatch.setattr(journal, "_lock", fcntl.lockf)
    path = tmp_path / journal.NAME
    writer = Writer(path, header(config_hash="abc"))
    writer.append({"type": "tags", "tags": {"a": "b"}})
    assert parent_of(tmp_path).journal_id == writer.header.journal_id
    assert journal.read_header(path) == writer.header
    assert [r["type"] for r in journal.records(path)] == ["header", "tags"]
    assert journal.last_record(path)["type"] == "tags" and not journal.ended(path)
    other = held_elsewhere(path)
    assert other.stdout.strip() == "True", other.stderr  # the parent's run is still held
    writer.append({"type": "end", "status": "FINISHED", "error": None})
    assert journal.ended(path)
    writer.close()
    assert journal.read_header(path) == writer.header and journal.held(path) is False
