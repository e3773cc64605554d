"""Long runs that survive: checkpoints, and the same MLflow run continued after a kill, a stop,
or a sweep or a search run again.

Real processes killed with real signals (SIGKILL of a whole process group, SIGTERM), real
checkpoint files, real stores read back with a plain MlflowClient.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiments import checkpoints
from experiments.command import app, exits
from experiments.record import sync
from experiments.reproduce import resume
from tests.conftest import runs_of
from tests.test_faults import loss_points, start_cli
from tests.test_search import the_study, trial_runs

STEPS = 20000
LONG = [f"task.steps={STEPS}", "checkpoint.every_steps=2000"]


def invoke(monkeypatch: pytest.MonkeyPatch, store_uri: str, args: list[str]) -> int:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setattr(sys, "argv", ["experiments", *args])
    return exits.invoke(app.hydra_main)


class SigtermAt(threading.Thread):
    """A real SIGTERM to this process (as ``kill`` or Slurm sends it) once the journals under
    ``directory`` hold ``points`` loss points: mid-run, whatever the machine's speed."""

    def __init__(self, directory: Path, points: int) -> None:
        super().__init__(daemon=True)
        self.directory, self.points = directory, points
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            journals = self.directory.glob("outputs/**/journal*.jsonl")
            if sum(loss_points(path) for path in journals) >= self.points:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def cancel(self) -> None:
        self.done.set()


def stopped_midway(
    monkeypatch: pytest.MonkeyPatch,
    store_uri: str,
    workdir: Path,
    args: list[str],
    points: int = 3000,
) -> None:
    """The command, sent SIGTERM once its journals under ``workdir`` hold ``points`` loss
    points (mid-run, whatever the machine's speed); it exits 143."""
    timer = SigtermAt(workdir, points)
    timer.start()
    try:
        assert invoke(monkeypatch, store_uri, args) == 143
    finally:
        timer.cancel()


def steps_of(client: MlflowClient, run_id: str, key: str = "objective/loss") -> list[int]:
    return [point.step for point in client.get_metric_history(run_id, key)]


def assert_each_step_once(client: MlflowClient, run, last: int) -> None:
    """Every metric with steps holds each of 0..``last`` exactly once (the others once)."""
    for key in ("objective/loss", "result/grad_norm", "var/x"):
        steps = sorted(steps_of(client, run.info.run_id, key))
        assert steps == list(range(last + 1)), (key, len(steps), steps[:3], steps[-3:])


def wait_for_loss_points(directory: Path, count: int, timeout: float = 120) -> None:
    """Until the journals under ``directory`` hold ``count`` loss points (all attempts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loss_points_under(directory) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {count} loss points under {directory}")


def loss_points_under(directory: Path) -> int:
    """The loss points the journals under ``directory`` hold, all attempts together (an
    attempt records no step an earlier one recorded: the count is the steps recorded)."""
    return sum(loss_points(path) for path in directory.glob("outputs/**/journal*.jsonl"))


@pytest.mark.slow
def test_a_run_killed_three_times_and_resumed_is_one_run_equal_to_one_never_killed(
    workdir, capfd
) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    shuffled = random.Random(os.getpid())
    first = start_cli([*LONG], workdir, new_session=True)
    process, run_id = first, None
    for _ in range(3):
        # A random moment: 1,000 to 4,000 steps past what the earlier attempts recorded (so
        # this attempt has reopened the run and is at work; counted from what they did
        # record, not planned ahead: a kill lands some steps after its moment, more on a
        # busy machine), then SIGKILL to the run's process and its recording process at
        # once (a node lost, the OOM killer).
        reached = max(2500, loss_points_under(workdir) + 1000) + shuffled.randrange(0, 3000)
        wait_for_loss_points(workdir, reached)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        (run,) = runs_of(client, "minimize")
        run_id = run.info.run_id
        capfd.readouterr()
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments.resume", run_id],
            cwd=workdir,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "from its checkpoint at step" in out
    (run,) = runs_of(client, "minimize")  # one run, continued three times
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "4" and run.data.tags["resumed"] == "3"
    assert int(run.data.tags["resumed_from"]) > 0
    assert_each_step_once(client, run, STEPS)
    # The same command never interrupted, in a store of its own: the same x, bit for bit.
    (workdir / "whole").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "experiments", *LONG],
        cwd=workdir / "whole",
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (whole,) = runs_of(MlflowClient(f"sqlite:///{workdir / 'whole' / 'mlflow.db'}"), "minimize")
    assert run.data.metrics["var/x"] == whole.data.metrics["var/x"]
    assert run.data.metrics["objective/loss"] == whole.data.metrics["objective/loss"]


def test_a_stop_saves_a_checkpoint_and_the_same_run_goes_on_from_it(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [*LONG, "checkpoint.every_steps=1000000", "hydra.run.dir=outputs/run"]
    stopped_midway(monkeypatch, store_uri, workdir, args)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "KILLED" and run.data.tags["error"] == "terminated (SIGTERM)"
    # The stop saved a checkpoint at the step it stopped after (no periodic one was due).
    (saved,) = (workdir / "outputs" / "run" / "checkpoints").iterdir()
    step = int(saved.name.removeprefix("step-"))
    assert steps_of(client, run.info.run_id)[-1] == step - 1  # its last step, whole
    capfd.readouterr()
    assert invoke(monkeypatch, store_uri, [*args, f"resume.run={run.info.run_id}"]) == 0
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags["resumed_from"] == str(step)
    assert run.data.tags["checkpoint.dir"] == str(saved.parent)
    assert_each_step_once(client, run, STEPS)
    # The store keeps the latest checkpoint, for a machine that has no copy of it.
    stored = {item.path for item in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert stored == {"checkpoint/manifest.json", "checkpoint/state.pt"}


def test_a_run_kept_offline_is_continued_there_and_synced_as_one_run(
    monkeypatch, capfd, new_store_uri, workdir
) -> None:
    args = [*LONG, "tracking.offline=true", "hydra.run.dir=outputs/run"]
    stopped_midway(monkeypatch, new_store_uri, workdir, args)
    # The same command in the same directory (a requeued job): it continues, offline too.
    assert invoke(monkeypatch, new_store_uri, args) == 0
    assert "continues its run (kept offline) from its checkpoint at step" in capfd.readouterr().out
    assert sync.main([str(workdir / "outputs" / "run")]) == 0
    client = MlflowClient(new_store_uri)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    assert_each_step_once(client, run, STEPS)


def big_state(megabytes: int) -> dict:
    return {"weights": torch.zeros(megabytes * 262144), "note": "big"}


KILLED_WRITE = """
import sys, torch
from pathlib import Path
from experiments import checkpoints
data = checkpoints._serialise({"weights": torch.ones(int(sys.argv[2]) * 262144)})
checkpoints.commit(Path(sys.argv[1]), 2, data, {"config_hash": "h"})
"""


@pytest.mark.slow
def test_sigkill_while_a_large_checkpoint_is_written_leaves_the_one_before(tmp_path) -> None:
    directory = tmp_path / "checkpoints"
    first = checkpoints.commit(directory, 1, checkpoints._serialise(big_state(1)), {})
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, str(directory), "400"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # killed once its state file is being written
        partial = list(directory.glob("tmp-*/state.pt"))
        if partial and partial[0].stat().st_size > 0:
            break
        time.sleep(0.005)
    writer.kill()
    writer.wait()
    assert list(directory.glob("tmp-*")), "the write ended before it was killed"
    assert checkpoints.latest_path(directory) == first
    found = checkpoints.Checkpoints(directory, resume_from=checkpoints.latest_path(directory))
    assert not list(directory.glob("tmp-*"))  # the stale temporary is cleared on start
    assert found.latest().step == 1
    # A checkpoint whose state file does not match its manifest is never loaded either.
    damaged = checkpoints.commit(directory, 3, checkpoints._serialise(big_state(1)), {})
    with open(damaged / checkpoints.STATE_FILE, "r+b") as handle:
        handle.truncate(1000)
    assert checkpoints.latest_path(directory) == first


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(directory: Path, marker: Path) -> Path:
    """A checkpoint whose state file runs ``touch MARKER`` when unpickled, with a manifest
    that matches it."""
    data = pickle.dumps({"params": RunsCode(str(marker))}, protocol=2)
    return checkpoints.commit(directory, 5, data, {"config_hash": "any"})


def test_a_checkpoint_crafted_to_run_code_is_refused_and_the_code_never_runs(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    marker = workdir / "the-pickle-ran"
    path = crafted(workdir / "shared" / "checkpoints", marker)
    with pytest.raises(Exception, match="refused, not plain data"):
        checkpoints.load(path)
    assert not marker.exists()
    # Named to a run: one line, nothing run, nothing left RUNNING.
    args = ["task.steps=5", "resume.new_run=true", f"resume.checkpoint={path}"]
    assert invoke(monkeypatch, store_uri, args) == 1
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error")]
    assert "refused, not plain data" in line
    assert not marker.exists()
    assert all(run.info.status != "RUNNING" for run in runs_of(client, "minimize"))


@pytest.fixture
def stopped(monkeypatch, store_uri, client, workdir):
    """A minimize run stopped by SIGTERM with its checkpoint saved: its id."""
    args = [*LONG, "checkpoint.every_steps=1000000", "hydra.run.dir=outputs/run"]
    stopped_midway(monkeypatch, store_uri, workdir, args)
    (run,) = runs_of(client, "minimize")
    return run.info.run_id


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["0123456789abcdef0123456789abcdef"], "no such run"),
        (["{run}", "task.steps=30000"], "was made with another config"),
        (["{finished}"], "FINISHED: there is nothing to continue (--new-run starts a new run"),
    ],
    ids=["unknown", "changed-config", "finished"],
)
def test_a_resume_that_cannot_be_is_one_line_and_leaves_nothing_running(
    stopped, monkeypatch, capfd, store_uri, client, workdir, arguments, error
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    if "{finished}" in arguments:
        assert invoke(monkeypatch, store_uri, ["task.steps=3"]) == 0
        done = [r for r in runs_of(client, "minimize") if r.info.status == "FINISHED"]
        arguments = [done[0].info.run_id]
    capfd.readouterr()
    given = [item.replace("{run}", stopped) for item in arguments]
    assert resume.main([*given, "--workdir", str(workdir)]) == 1
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: ") and error in line, err
    assert all(run.info.status != "RUNNING" for run in runs_of(client, "minimize"))


def test_an_unwritable_checkpoint_directory_is_one_line(
    monkeypatch, capfd, store_uri, client
) -> None:
    assert invoke(monkeypatch, store_uri, ["task.steps=5", "checkpoint.dir=/proc/nowhere"]) == 1
    err = capfd.readouterr().err
    assert "error: checkpoint.dir=/proc/nowhere" in err and "cannot write checkpoints there" in err
    assert runs_of(client, "minimize") == []


def test_a_new_run_from_a_checkpoint_says_where_it_came_from(
    stopped, monkeypatch, capfd, store_uri, client, workdir
) -> None:
    capfd.readouterr()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    # Another config (more steps) from that checkpoint: a new run, not the stopped one.
    given = [stopped, f"task.steps={STEPS + 1000}", "--new-run", "--workdir", str(workdir)]
    assert resume.main(given) == 0
    runs = {run.info.run_id: run for run in runs_of(client, "minimize")}
    assert runs[stopped].info.status == "KILLED"  # left as it was
    (new,) = [run for run in runs.values() if run.info.run_id != stopped]
    assert new.info.status == "FINISHED" and new.data.tags["resumed_from_run"] == stopped
    step = int(new.data.tags["resumed_from"])
    assert steps_of(client, new.info.run_id)[0] == step  # it starts where the other stopped


@pytest.mark.slow
def test_a_killed_sweep_run_again_with_skip_existing_continues_its_unfinished_job(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = ["-m", "task.steps=3,20000", "checkpoint.every_steps=1000000", "skip_existing=true"]
    stopped_midway(monkeypatch, store_uri, workdir, args, 4000)  # while the second job runs
    jobs = {
        r.data.params["task.steps"]: r
        for r in runs_of(client, "minimize")
        if "sweep" not in r.data.tags
    }
    assert jobs["3"].info.status == "FINISHED" and jobs["20000"].info.status == "KILLED"
    killed = jobs["20000"].info.run_id
    capfd.readouterr()
    assert invoke(monkeypatch, store_uri, args) == 0
    out = capfd.readouterr().out
    assert "2 jobs: 1 finished, 1 skipped" in out
    jobs = [r for r in runs_of(client, "minimize") if "sweep" not in r.data.tags]
    assert len(jobs) == 2  # no new run: the KILLED one went on
    continued = client.get_run(killed)
    assert continued.info.status == "FINISHED" and continued.data.tags["resumed"] == "1"
    assert_each_step_once(client, continued, 20000)


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_that_trial_in_its_run(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [
        "-m",
        "experiment=lr_search",
        "hydra.sweeper.study_name=long",
        "hydra.sweeper.n_trials=2",
        "task.steps=20000",
        "task.tol=null",
        "checkpoint.every_steps=1000000",
    ]
    stopped_midway(monkeypatch, store_uri, workdir, args)  # during the first trial
    (killed,) = trial_runs(client).values()
    assert killed.info.status == "KILLED"
    capfd.readouterr()
    assert invoke(monkeypatch, store_uri, args) == 0
    trials = the_study(f"sqlite:///{workdir / 'optuna.db'}", "long").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    runs = trial_runs(client)  # by their trial tag: one run per trial number
    assert sorted(runs) == sorted(t.number for t in complete)
    # The abandoned trial's run went on, as the trial that retries it: the same run.
    continued = client.get_run(killed.info.run_id)
    assert continued.info.status == "FINISHED" and continued.data.tags["resumed"] == "1"
    (retry,) = [t for t in complete if t.user_attrs.get("experiments.retry_of") == 0]
    assert int(continued.data.tags["trial"]) == retry.number
    assert continued.data.metrics["objective/loss"] == retry.value
    assert_each_step_once(client, continued, 20000)
    assert all(run.info.status == "FINISHED" for run in runs.values())


def test_a_run_is_continued_elsewhere_from_the_checkpoint_its_store_keeps(
    stopped, monkeypatch, capfd, store_uri, client, workdir
) -> None:
    # Another machine: neither the run's directory nor its checkpoints are here; the store
    # has the latest checkpoint (the artifact checkpoint/), downloaded and continued from.
    import shutil

    shutil.rmtree(workdir / "outputs" / "run")
    capfd.readouterr()
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resume.main([stopped, "--from", store_uri, "--workdir", str(elsewhere)]) == 0
    out = capfd.readouterr().out
    assert "from its checkpoint at step" in out
    (run,) = runs_of(client, "minimize")
    assert run.info.run_id == stopped and run.info.status == "FINISHED"
    downloaded = elsewhere / "outputs" / "resumed" / stopped / "checkpoints"
    (step,) = downloaded.iterdir()  # the store's copy, from which it went on
    assert f"resume.checkpoint={step}" in out
    assert_each_step_once(client, run, STEPS)


def test_an_earlier_attempt_synced_after_the_run_went_on_elsewhere_changes_nothing(
    stopped, monkeypatch, capfd, store_uri, client, workdir
) -> None:
    # The machine the run stopped on keeps its journal; what it had not uploaded when the run
    # was continued elsewhere (its end line here, and its mark) is synced from there later.
    import shutil

    from experiments.record import journal, marks

    kept = workdir / "machine1"
    shutil.copytree(workdir / "outputs" / "run", kept)
    (path,) = journal.find([kept])
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "end"
    # And a point no attempt sent (as where a sync was cut short before a later attempt's).
    unsent = {"type": "metrics", "step": 7, "values": {"probe/unsent": 1.5}, "time": 1}
    path.write_text("".join(lines[:-1]) + json.dumps(unsent) + "\n")
    marks.state_path(path).unlink()
    shutil.rmtree(workdir / "outputs" / "run")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resume.main([stopped, "--from", store_uri, "--workdir", str(elsewhere)]) == 0
    (run,) = runs_of(client, "minimize")
    assert run.data.tags["attempt.journal"] != journal.read_header(path).journal_id
    capfd.readouterr()
    assert sync.main([str(kept), "--tracking-uri", store_uri]) == 0
    out = capfd.readouterr().out
    assert "superseded" in out and "1 points it lacked, nothing else" in out, out
    (run,) = runs_of(client, "minimize")
    assert run.info.run_id == stopped and run.info.status == "FINISHED"
    assert "error" not in run.data.tags
    assert_each_step_once(client, run, STEPS)
    assert [(p.step, p.value) for p in client.get_metric_history(stopped, "probe/unsent")] == [
        (7, 1.5)
    ]
