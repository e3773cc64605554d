"""Against a real `mlflow server` process: parallel jobs over HTTP, and the server going away.

One server serves the module (each test records into its own experiment); the tests that
stop it start it again on the same store and port.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli, runs_of
from tests.services import MlflowServer
from tests.test_faults import start_cli, sync, wait_for_points
from tests.test_reproduce import rerun

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, empty_store):
    running = MlflowServer(tmp_path_factory.mktemp("server"), store_from=empty_store)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def stoppable(shared_server: MlflowServer) -> MlflowServer:
    """The module's server, running; the test may stop and start it."""
    if shared_server.process is None:
        shared_server.start()
    return shared_server


@pytest.fixture
def server(stoppable: MlflowServer) -> str:
    """The URI of the module's tracking server."""
    return stoppable.uri


def test_parallel_sweep_over_http_lands_every_run_in_its_experiment(server, workdir) -> None:
    result = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optim.lr=0.01,0.02,0.03,0.04",
            "task.steps=5",
            "tracking.experiment=parallel",
        ],
        cwd=workdir,
        env={"MLFLOW_TRACKING_URI": server},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    jobs = [run for run in runs if run is not parent]
    assert len(jobs) == 4
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    default = client.get_experiment_by_name("Default")
    assert client.search_runs([default.experiment_id]) == []  # nothing strayed into Default
    artifacts = {a.path for a in client.list_artifacts(jobs[0].info.run_id)}
    assert {"config.yaml", "function.png", "loss.png"} <= artifacts
    assert not (workdir / "mlflow.db").exists()  # the server's store was used, not a local one
    page = f"#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
    page += "?workflowType=machine_learning"
    assert f"Review it at {server}/{page}" in result.stdout


LONG = ["task.steps=10000", "optim.lr=1e-7"]


def test_a_server_restarted_mid_run_loses_nothing(stoppable, workdir) -> None:
    args = [*LONG, "tracking.experiment=restarted"]
    process = start_cli(args, workdir, {"MLFLOW_TRACKING_URI": stoppable.uri})
    wait_for_points(workdir / "outputs", 3000)
    stoppable.stop()
    time.sleep(3)  # the task goes on; the store is gone for a few seconds
    stoppable.start()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "does not answer" in out and "answers again" in out
    assert "Traceback" not in out + err
    client = MlflowClient(stoppable.uri)
    (run,) = runs_of(client, "restarted")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 10001  # every step
    assert run.data.params["task.steps"] == "10000"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "function.png", "loss.png", "overrides.yaml"} <= artifacts


def test_a_server_gone_past_the_retry_window_keeps_the_run_for_sync(stoppable, workdir) -> None:
    args = [*LONG, "tracking.retry_s=2", "tracking.log_every=2", "tracking.experiment=gone"]
    process = start_cli(args, workdir, {"MLFLOW_TRACKING_URI": stoppable.uri})
    (path,) = wait_for_points(workdir / "outputs", 2000)
    stoppable.stop()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 75, err  # finished, not recorded
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the tracking store"), err
    assert f"python -m experiments.sync {path.parent}" in lines[0]
    assert "Traceback" not in out + err

    stoppable.start()
    client = MlflowClient(stoppable.uri)
    (run,) = runs_of(client, "gone")
    assert run.info.status == "RUNNING"  # created before the loss; closed by sync below
    synced = sync(workdir, str(path.parent))
    assert synced.returncode == 0, synced.stderr
    assert "uploaded: " in synced.stdout and "FINISHED" in synced.stdout
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 5001
    assert {"function.png", "loss.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    again = sync(workdir, str(path.parent))
    assert again.returncode == 0 and "1 already synced" in again.stdout
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 5001


def test_a_sweep_goes_on_when_the_server_goes_and_sync_completes_it(stoppable, workdir) -> None:
    # Job 0 short; jobs 1 and 2 long enough to start and run on after the server went.
    args = ["-m", "task.steps=1000,5001,5002", "tracking.log_every=10"]
    args += ["tracking.retry_s=2", "tracking.experiment=swept"]
    process = start_cli(args, workdir, {"MLFLOW_TRACKING_URI": stoppable.uri})
    deadline = time.monotonic() + 120
    first = None
    while first is None and time.monotonic() < deadline:
        found = list((workdir / "outputs").glob("multirun/*/*/0/outcome.json"))
        if found and json.loads(found[0].read_text())["status"] == "FINISHED":
            first = found[0]
        time.sleep(0.1)
    assert first is not None, "job 0 did not finish"
    stoppable.stop()  # jobs 1 and 2 start without a store
    out, err = process.communicate(timeout=300)
    assert process.returncode == 75, err
    # Job 0's last records may still have been on their way when the server went.
    assert re.search(r"3 jobs: ([12] finished, )?[123] unsynced", out), out
    sweep_dir = first.parent.parent
    shown = sweep_dir.relative_to(workdir)  # as Hydra names it, from where the user stands
    assert err.strip().splitlines()[-1].endswith(f"python -m experiments.sync {shown}")
    assert "Traceback" not in out + err

    stoppable.start()
    synced = sync(workdir, str(sweep_dir))
    assert synced.returncode == 0, synced.stderr
    client = MlflowClient(stoppable.uri)
    runs = runs_of(client, "swept")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    jobs = [run for run in runs if run is not parent]
    assert parent.info.status == "FINISHED"
    assert sorted(run.data.params["task.steps"] for run in jobs) == ["1000", "5001", "5002"]
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert {run.info.status for run in jobs} == {"FINISHED"}
    assert [len(client.get_metric_history(run.info.run_id, "objective/loss")) for run in jobs] == [
        len(range(0, int(run.data.params["task.steps"]), 10)) + 1
        for run in jobs  # and the end
    ]


def test_a_run_on_the_server_reruns_into_a_local_store(server, workdir, store_uri) -> None:
    done = run_cli(
        ["task.steps=10", "tracking.experiment=published"],
        cwd=workdir,
        env={"MLFLOW_TRACKING_URI": server},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    published = runs_of(MlflowClient(server), "published")[0]
    assert f"--from {server}" in published.data.tags["mlflow.note.content"]

    again = rerun(workdir, published.info.run_id, "--from", server)  # recorded here
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "verdict: reproduced" in again.stdout
    local = runs_of(MlflowClient(store_uri), "published")
    assert [run.data.tags["rerun_of"] for run in local] == [published.info.run_id]
    assert local[0].data.tags["reproduced"] == "true"
    assert len(runs_of(MlflowClient(server), "published")) == 1  # nothing new on the server
