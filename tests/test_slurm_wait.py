"""The Slurm launcher's bound on its wait, without a cluster: the setting, its default, and
a controller that never answers.

The wait on a real cluster (a job held PENDING past the bound) is in ``test_slurm.py``.
Here Slurm's commands are stand-ins on ``PATH`` that fail as they do when the controller
is down, and the jobs are stand-ins for submitit's, as far as the launcher looks at them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobStatus

from experiments.errors import ConfigError, RunFailure
from hydra_plugins.experiments_launcher import slurm_launcher
from hydra_plugins.experiments_launcher.slurm_launcher import (
    QUEUE_ALLOWANCE_MIN,
    max_wait_min,
    result_of,
    wait_for_all,
)
from tests.conftest import hydra_node

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
PRESET = {"timeout_min": 30, "max_num_timeout": 0, "array_parallelism": 256}


class Watcher:
    """submitit's watcher where ``sacct`` fails: it learns nothing, and says so."""

    def update(self) -> None:
        pass

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return "UNKNOWN"


class Job:
    """What the launcher reads of a submitit job: its id, its folder, its result file."""

    def __init__(self, job_id: str, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.job_id = job_id
        self.watcher = Watcher()
        self.paths = SimpleNamespace(
            folder=folder, result_pickle=folder / "result.pkl", stderr=folder / "log.err"
        )

    def done(self) -> bool:  # submitit's: the result file, else what sacct said (nothing)
        return self.paths.result_pickle.exists()


def slurm_down(directory: Path, scancel_answers: bool) -> Path:
    """``squeue`` and ``sacct`` that cannot reach the controller; ``scancel`` that records
    what it was asked to cancel and succeeds, or fails like the others."""
    directory.mkdir()
    for name in ("squeue", "sacct"):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name}: error: {DOWN}' >&2\nexit 1\n")
        path.chmod(0o755)
    scancel = directory / "scancel"
    ending = "exit 0" if scancel_answers else f"echo 'scancel: error: {DOWN}' >&2\nexit 1"
    scancel.write_text(f'#!/bin/sh\necho "$@" >> "{directory}/cancelled"\n{ending}\n')
    scancel.chmod(0o755)
    return directory


@pytest.fixture
def jobs(tmp_path: Path) -> list[Job]:
    """Job 0 finished (its result is there); job 1 never ended."""
    finished, waiting = Job("40_0", tmp_path / "40_0"), Job("40_1", tmp_path / "40_1")
    finished.paths.result_pickle.write_bytes(b"")
    return [finished, waiting]


@pytest.mark.parametrize("accounting", [True, False])
def test_with_slurm_not_answering_the_wait_ends_at_its_bound(
    monkeypatch, tmp_path, jobs, accounting
) -> None:
    bin_dir = slurm_down(tmp_path / "bin", scancel_answers=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm_launcher, "CANCEL_WAIT_S", 1.0)  # squeue never says they left
    started = time.monotonic()
    unfinished = wait_for_all(jobs, accounting=accounting, max_wait=0.02)  # 1.2 s
    assert 1.2 <= time.monotonic() - started < 10
    assert unfinished.cut == {
        "40_1": "with Slurm not answering after the launcher's wait of 0.02 min "
        "(hydra.launcher.max_wait_min): cancelled"
    }
    assert unfinished.gone == set()
    # Slurm did not say it holds them: every job waited for is cancelled, by its own id.
    assert (bin_dir / "cancelled").read_text().split() == ["40_1"]
    failed = result_of(jobs[1], 1, ["task.steps=6"], tmp_path, unfinished)
    assert failed.status == JobStatus.FAILED
    with pytest.raises(RunFailure, match=r"^job 1 \(Slurm job 40_1\) with Slurm not answering"):
        failed.return_value  # noqa: B018


def test_a_job_scancel_could_not_reach_is_said_to_be_left_uncancelled(
    monkeypatch, tmp_path, jobs
) -> None:
    bin_dir = slurm_down(tmp_path / "bin", scancel_answers=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    unfinished = wait_for_all(jobs, accounting=True, max_wait=0.02)
    assert time.monotonic() - started < 10  # no wait for a cancel that did not happen
    assert unfinished.cut["40_1"] == (
        "with Slurm not answering after the launcher's wait of 0.02 min "
        f"(hydra.launcher.max_wait_min): could not cancel it (scancel: error: {DOWN})"
    )


def test_the_wait_is_bounded_by_default_by_the_jobs_time_limits_and_three_days() -> None:
    assert max_wait_min(PRESET, jobs=3) == QUEUE_ALLOWANCE_MIN + 30 == 3 * 24 * 60 + 30
    # Two rounds of 256 jobs at most, each job up to two attempts of 30 minutes.
    retried = {**PRESET, "max_num_timeout": 1}
    assert max_wait_min(retried, jobs=300) == QUEUE_ALLOWANCE_MIN + 2 * 2 * 30


def test_the_wait_is_the_setting_when_given() -> None:
    assert max_wait_min({**PRESET, "max_wait_min": 0.5}, jobs=3) == 0.5


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_the_wait_must_be_a_positive_number_of_minutes(value) -> None:
    with pytest.raises(
        ConfigError, match=r"^hydra\.launcher\.max_wait_min must be a positive number of minutes"
    ):
        max_wait_min({**PRESET, "max_wait_min": value}, jobs=1)


def test_the_setting_is_the_launchers_and_unset_by_default() -> None:
    assert hydra_node(["experiment=slurm"]).launcher.max_wait_min is None
    node = hydra_node(["experiment=slurm", "hydra.launcher.max_wait_min=90"])
    assert node.launcher.max_wait_min == 90.0
