"""Against a real `mlflow server` process: parallel jobs and experiment creation over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli

pytestmark = [pytest.mark.server, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """A tracking server on a fresh SQLite store, stopped after the test."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=store,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield uri
    process.terminate()
    process.wait(timeout=30)


def test_parallel_sweep_over_http_lands_every_run_in_its_experiment(server, workdir) -> None:
    result = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "optim.lr=0.01,0.02,0.03,0.04",
            "task.steps=5",
        ],
        cwd=workdir,
        env={"MLFLOW_TRACKING_URI": server},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("minimize")
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
