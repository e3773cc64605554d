"""Real faults on real processes: signals, SIGKILL, and what survives them.

The command line runs in a subprocess exactly as a user starts it; the test sends it real
signals, then reads the store back with a plain ``MlflowClient`` and counts what the run's
journal holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from experiments.record import journal
from tests.conftest import STARTED, runs_of, sigterm_in_a_weakref_callback

pytestmark = pytest.mark.slow

LONG = ["task.steps=5000000", "optim.lr=1e-7"]


def start_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    # As from a terminal: Ctrl-C and a hang-up reach it. A suite started in the background
    # of a script (`make test &`) ignores SIGINT and SIGQUIT, one started with `nohup`
    # SIGHUP, and a command inherits that and keeps it, as it should; so here the child gets
    # the default, which its exec gives a signal handled in this process.
    ignored = [
        signum
        for signum in (signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(signum) == signal.SIG_IGN
    ]
    for signum in ignored:
        signal.signal(signum, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,  # its own process group, to kill all of it at once
        )
    finally:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
    STARTED.append(process)
    return process


def wait_for_points(root: Path, count: int, pattern: str = "**/journal*.jsonl", timeout=120):
    """Wait until journals under ``root`` hold ``count`` metric records; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in root.glob(pattern) if metric_lines(p) >= count]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no journal under {root} reached {count} metric records")


def metric_lines(path: Path) -> int:
    return sum(1 for record in journal.records(path) if record["type"] == "metrics")


def loss_points(path: Path) -> int:
    return sum(
        1
        for r in journal.records(path)
        if r["type"] == "metrics" and "objective/loss" in r["values"]
    )


def store(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.mark.parametrize(
    ("signum", "status", "named"),
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGHUP, 129, "SIGHUP"),
        (signal.SIGINT, 130, "SIGINT"),
    ],
)
def test_a_signal_ends_the_run_killed_with_every_point_recorded(
    workdir, signum, status, named
) -> None:
    process = start_cli(LONG, workdir)
    (path,) = wait_for_points(workdir / "outputs", 3000)
    process.send_signal(signum)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10  # within a few seconds
    assert process.returncode == status, err
    assert "Traceback" not in err + out
    assert err.strip().splitlines()[-1] == f"error: {journal.last_record(path)['error']}"
    (run,) = runs_of(store(workdir), "minimize")
    assert run.info.status == "KILLED"
    assert named in run.data.tags["error"]
    history = store(workdir).get_metric_history(run.info.run_id, "objective/loss")
    assert len(history) == loss_points(path) >= 3000  # every point recorded reached the store
    assert json.loads(Path(upload_mark(path)).read_text())["ended"] is True


def upload_mark(path: Path) -> Path:
    from experiments.record.marks import state_path

    return state_path(path)


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
def test_sigkill_of_the_task_is_closed_at_once_by_its_recording_process(workdir) -> None:
    process = start_cli(LONG, workdir)
    (path,) = wait_for_points(workdir / "outputs", 3000)
    process.kill()  # as the OOM killer would: no handler runs
    process.wait()
    kept = loss_points(path)
    client = store(workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (run,) = runs_of(client, "minimize")
        if run.info.status != "RUNNING":
            break
        time.sleep(0.2)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith(f"lost: process {process.pid} on ")
    assert "died without closing the run" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == kept  # nothing lost
    synced = sync(workdir, str(path.parent))
    assert synced.returncode == 0 and "1 already synced" in synced.stdout


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
def test_sigkill_of_both_processes_leaves_the_journal_for_the_next_run_and_sync(workdir) -> None:
    process = start_cli(LONG, workdir, new_session=True)
    (path,) = wait_for_points(workdir / "outputs", 3000)
    os.killpg(process.pid, signal.SIGKILL)  # a lost node: the run's process and its recorder
    process.wait()
    time.sleep(0.5)
    client = store(workdir)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "RUNNING"  # nothing could close it
    kept = loss_points(path)
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) < kept

    # The next run in the experiment finds it lost: this host, and that pid is gone.
    next_run = subprocess.run(
        [sys.executable, "-m", "experiments", "task.steps=2"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert next_run.returncode == 0, next_run.stderr
    lost = client.get_run(run.info.run_id)
    assert lost.info.status == "FAILED"
    assert lost.data.tags["error"].startswith(f"lost: process {process.pid} on ")
    assert f"python -m experiments.sync {path.parent}" in lost.data.tags["error"]

    synced = sync(workdir, str(path.parent))
    assert synced.returncode == 0, synced.stderr
    assert "closed as lost" in synced.stdout and "1 journal: 1 closed as lost" in synced.stdout
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == kept  # nothing lost
    assert client.get_run(run.info.run_id).info.status == "FAILED"

    again = sync(workdir, str(path.parent))
    assert again.returncode == 0 and "1 already synced" in again.stdout
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == kept


def sync(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.sync", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
def test_sigterm_stops_a_sweep_no_further_job_starts(workdir) -> None:
    process = start_cli(["-m", "task.steps=5000000,5000001,5000002", "optim.lr=1e-7"], workdir)
    wait_for_points(workdir / "outputs", 1000, "multirun/*/*/0/journal.jsonl")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "1 job: 1 killed" in out  # the summary is printed
    runs = runs_of(store(workdir), "minimize")
    assert sorted((run.info.run_name.split()[0], run.info.status) for run in runs) == [
        ("steps=5000000", "KILLED"),  # the job: named by what the sweep varies
        ("sweep", "KILLED"),
    ]
    assert all("SIGTERM" in run.data.tags["error"] for run in runs)


@pytest.mark.parametrize(
    ("args", "journal", "sweep"),
    [
        (["-m", "task.steps=5,6"], "outputs/multirun/*/*/journal.jsonl", "true"),
        (["task.steps=5"], "outputs/runs/*/*/journal.jsonl", None),
    ],
    ids=["sweep", "run"],
)
def test_sigterm_while_a_run_opens_ends_it_killed(workdir, args, journal, sweep) -> None:
    # The journal is there before the run is: the signal comes while the run opens (its
    # recording process started), while the store opens (a fresh SQLite file, its tables
    # created) or while the task's modules load. Whichever, the run ends KILLED, never lost.
    process = start_cli(args, workdir)
    deadline = time.monotonic() + 60
    while not list(workdir.glob(journal)):
        assert time.monotonic() < deadline and process.poll() is None, "no run started"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    # The command's one line; the recording process, left to finish opening the fresh store
    # alone after a signal, may log MLflow's "Updating database tables" after it.
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: terminated (SIGTERM)"
    ], err
    assert "Traceback" not in err
    # The command left its recording process to finish alone (docs/faults.md: after a signal it
    # waits a few seconds at most): that process may still be opening the store now.
    run = closed_run(store(workdir), "minimize")
    assert run.data.tags.get("sweep") == sweep
    assert (run.info.status, run.data.tags["error"]) == (
        "KILLED",
        "terminated (SIGTERM)",
    ), run.data.tags["error"]


def closed_run(client: MlflowClient, experiment: str, timeout: float = 60.0):
    """The one run of ``experiment``, once the store has it ended (no longer RUNNING)."""
    deadline = time.monotonic() + timeout
    while True:
        found = runs_of(client, experiment)
        if len(found) == 1 and found[0].info.status != "RUNNING":
            return found[0]
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in found]
        time.sleep(0.5)


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_sigterm_to_the_launcher_leaves_no_worker_run_running(workdir, launcher) -> None:
    # Output to files: submitit's job controller outlives the launcher holding its pipes.
    with open(workdir / "out", "w") as out, open(workdir / "err", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments", "-m", *launcher]
            + ["task.steps=5000000,5000001", "optim.lr=1e-7"],
            cwd=workdir,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            stdout=out,
            stderr=err,
        )
    wait_for_points(workdir / "outputs", 500, "multirun/*/*/*/journal.jsonl")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)  # the launcher waits 10 s at most for its jobs
    assert process.returncode == 143, (workdir / "err").read_text()
    assert "killed" in (workdir / "out").read_text()
    # The jobs end their runs themselves, the last of them perhaps after the launcher.
    deadline = time.monotonic() + 60
    while True:
        runs = runs_of(store(workdir), "minimize")
        running = [run.info.run_name for run in runs if run.info.status == "RUNNING"]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    logs = {p.name: p.read_text()[-3000:] for p in workdir.glob("outputs/**/.submitit/*/*_log.*")}
    assert runs and not running, logs
    parent = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert [run.info.status for run in parent] == ["KILLED"]


SUBMITIT_JOB = """
import os, sys
from pathlib import Path
import submitit
from submitit.slurm.slurm import SlurmJobEnvironment
from submitit.core.utils import JobPaths

from experiments import runner
from tests.conftest import compose_config

class Job:  # a checkpointable callable, as Hydra's submitit launcher is
    def __call__(self):
        pass
    def checkpoint(self):
        return submitit.helpers.DelayedSubmission(self)

folder = Path(sys.argv[1])
delayed = submitit.helpers.DelayedSubmission(Job())
delayed.set_timeout(int(sys.argv[2]), 0)
SlurmJobEnvironment()._handle_signals(JobPaths(folder, job_id="4242"), delayed)
cfg = compose_config(["task.steps=5000000", "optim.lr=1e-7", f"tracking.uri={sys.argv[3]}"])
runner.execute(cfg, [], folder / "run")
"""


@pytest.mark.parametrize(
    ("timeout_min", "reason", "requeued"),
    [
        (600, "preempted by Slurm (SIGUSR2); submitit requeued the job", True),
        (1, "Slurm time limit near (SIGUSR2); not requeued", False),
    ],
)
def test_slurm_usr2_through_submitit_ends_the_run_killed_with_the_reason(
    workdir, store_uri, timeout_min, reason, requeued
) -> None:
    # submitit's own handlers, as in a Slurm job; scontrol is a stand-in that notes its call.
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" > "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    (workdir / "job.py").write_text(SUBMITIT_JOB)
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(workdir / "scontrol.log"),
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    process = subprocess.Popen(
        [sys.executable, str(workdir / "job.py"), str(workdir), str(timeout_min), store_uri],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_points(workdir / "run", 1000, "journal.jsonl")
    process.send_signal(signal.SIGUSR2)
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0, out
    (run,) = runs_of(store(workdir), "minimize")
    assert run.info.status == "KILLED", out
    assert run.data.tags["error"].startswith(reason)
    log = workdir / "scontrol.log"
    assert (log.exists() and log.read_text().split() == ["requeue", "4242"]) == requeued


def test_a_signal_the_process_ignores_stays_ignored_while_a_run_is_handled() -> None:
    # A background job of a script starts with SIGINT ignored; `nohup` ignores SIGHUP.
    from experiments import signals

    before = {signum: signal.getsignal(signum) for signum in signals.HANDLED}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with signals.handling():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_signal_whose_interrupt_python_dropped_is_raised_again(monkeypatch) -> None:
    # A SIGTERM whose handler runs inside a weakref callback (as an import's module-lock
    # clean-up is): Python prints the Interrupted as "Exception ignored" and drops it, and
    # the run went on to end FINISHED, exit 0. The run's end raises it again.
    from experiments import signals

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_value))
    with signals.handling():
        sigterm_in_a_weakref_callback()
        assert [type(error) for error in dropped] == [signals.Interrupted]
        with pytest.raises(signals.Interrupted) as raised:
            signals.raise_swallowed()
    assert raised.value.reason == "terminated (SIGTERM)"
    assert raised.value.exit_status == 143
