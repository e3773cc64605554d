"""The command's start-up without the cyclic collector (experiments.process)."""

from __future__ import annotations

import gc

import pytest

from experiments import process


@pytest.fixture
def collector():
    """Leave the collector as the test found it."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()
    process._paused = False


def test_begin_pauses_the_collector_and_settle_freezes_and_resumes(collector) -> None:
    gc.enable()
    process.pause_collector()
    assert not gc.isenabled()
    process.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what was loaded is out of the collector's passes
    frozen = gc.get_freeze_count()
    made_since = [[] for _ in range(1000)]  # what a job makes is the collector's to see
    process.settle()  # only once: later calls (the next jobs of a sweep) freeze nothing
    # (a frozen object that is freed leaves the count: it may drop, never grow by these)
    assert gc.get_freeze_count() <= frozen and made_since


def test_settle_without_begin_leaves_the_process_alone(collector) -> None:
    gc.enable()
    process.settle()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collector_turned_off_by_the_user_stays_off(collector) -> None:
    gc.disable()
    process.pause_collector()
    process.settle()
    assert not gc.isenabled() and gc.get_freeze_count() == 0
