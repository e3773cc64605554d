"""The MLflow side: batching, run statuses, and the store shared by concurrent processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from experiments.errors import RunFailure
from experiments.tracking import Tracker
from tests.conftest import runs_of


class CountingClient(MlflowClient):
    """A real MLflow client that counts its log_batch calls."""

    calls = 0

    def log_batch(self, *args, **kwargs):
        CountingClient.calls += 1
        return super().log_batch(*args, **kwargs)


def test_metric_points_are_sent_in_batches(store_uri) -> None:
    tracker = Tracker(store_uri)
    tracker.client = CountingClient(tracking_uri=store_uri)
    experiment = tracker.experiment_id("batching")
    CountingClient.calls = 0
    with tracker.start_run(experiment, "batched", {}) as recorder:
        for step in range(2500):
            recorder.log_metrics({"loss": 1.0 / (step + 1), "x": float(step)}, step=step)
        run_id = recorder.run_id
    assert CountingClient.calls == 5  # 5,000 points, 1,000 per call
    loss = tracker.client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == list(range(2500))
    assert loss[-1].value == pytest.approx(1 / 2500)


def test_statuses_finished_failed_killed(store_uri) -> None:
    tracker = Tracker(store_uri)
    experiment = tracker.experiment_id("statuses")
    with tracker.start_run(experiment, "ok", {}):
        pass
    with pytest.raises(RunFailure), tracker.start_run(experiment, "bad", {}):
        raise RunFailure("diverged at step 3\nsecond line")
    with pytest.raises(KeyboardInterrupt), tracker.start_run(experiment, "stopped", {}):
        raise KeyboardInterrupt
    runs = {run.info.run_name: run for run in runs_of(MlflowClient(store_uri), "statuses")}
    assert runs["ok"].info.status == "FINISHED"
    assert runs["bad"].info.status == "FAILED"
    assert runs["bad"].data.tags["error"] == "diverged at step 3"
    assert runs["stopped"].info.status == "KILLED"
    assert all(run.info.end_time for run in runs.values())


def test_long_params_are_truncated_not_refused(store_uri) -> None:
    tracker = Tracker(store_uri)
    experiment = tracker.experiment_id("params")
    with tracker.start_run(experiment, "long", {}) as recorder:
        recorder.log_params({"long": "x" * 10_000, "none": None})
        run_id = recorder.run_id
    params = MlflowClient(store_uri).get_run(run_id).data.params
    assert len(params["long"]) <= 6000 and params["long"].endswith("(truncated)")
    assert params["none"] == "null"


@pytest.mark.slow
def test_ctrl_c_ends_the_run_killed(workdir) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", "task.steps=5000000", "tracking.log_every=1000"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the run is under way
        if (workdir / "mlflow.db").exists():
            runs = runs_of(client, "minimize")
            if runs and runs[0].info.status == "RUNNING":
                break
        time.sleep(0.5)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "KILLED"
