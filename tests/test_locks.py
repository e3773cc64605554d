"""The lock beside a file that several processes open at once (``experiments.locks``): a new
``mlflow.db`` or ``optuna.db``, whose tables the first process to open it creates."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments import locks
from experiments.record.store.tracker import Tracker

HOLD = """
import sys, time
from experiments import locks
with locks.beside(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_lock_of_a_file_is_beside_it_and_keeps_another_process_out(tmp_path) -> None:
    guarded = tmp_path / "shared" / "mlflow.db"
    guarded.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(guarded), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockTimeout, match=r"shared/mlflow\.db\.lock is held by another"):
            with locks.beside(guarded, timeout_s=0.3):
                pass
        began = time.monotonic()
        with locks.beside(guarded, timeout_s=30) as lock:  # waits for the holder to finish
            assert time.monotonic() - began > 0.3
            assert lock == tmp_path / "shared" / "mlflow.db.lock"
    finally:
        holder.wait(timeout=30)
    assert sorted(p.name for p in guarded.parent.iterdir()) == ["mlflow.db.lock"]


def test_a_directory_that_cannot_hold_the_lock_opens_without_one() -> None:
    # A store on a read-only share (for a report): nothing can be created there, tables
    # included, so there is nothing to serialise. /proc refuses a new file even to root.
    with locks.beside("/proc/self/mlflow.db", timeout_s=0.1) as lock:
        assert not lock.exists()


def test_a_sqlite_stores_opening_lock_is_beside_the_store_not_in_tmp(tmp_path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("experiments-store-*.lock"))
    store = tmp_path / "runs" / "mlflow.db"
    tracker = Tracker(f"sqlite:///{store}")
    tracker.experiment_id("minimize")
    assert sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    assert set(Path(tempfile.gettempdir()).glob("experiments-store-*.lock")) == before
