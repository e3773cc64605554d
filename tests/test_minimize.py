"""The minimize task end to end, read back from a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from experiments import runner
from experiments.errors import ConfigError, RunFailure
from experiments.tasks.context import MemoryRecorder, TaskContext
from experiments.tasks.minimize import task as minimize
from tests.conftest import compose_config, runs_of


def run_minimize(store_uri: str, tmp_path: Path, overrides: list[str]) -> float | None:
    cfg = compose_config(["task=minimize", f"tracking.uri={store_uri}", *overrides])
    return runner.run(cfg, overrides=overrides, output_dir=tmp_path / "out")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_defaults_reproduce_the_tutorial(store_uri, client, tmp_path) -> None:
    loss = run_minimize(store_uri, tmp_path, [])
    assert loss == pytest.approx(-12.0)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED"
    assert f"{run.data.metrics['var/x']:.4f}" == "-1.0000"
    xs = history(client, run.info.run_id, "var/x")
    assert [step for step, _ in xs] == list(range(21))  # the start, then after each of 20 steps
    assert xs[0][1] == 10.0
    # the tutorial's first SGD update: x <- x - 0.1 * (6x + 6) = 10 - 6.6
    assert xs[1][1] == pytest.approx(3.4)
    assert len(history(client, run.info.run_id, "objective/loss")) == 21
    assert len(history(client, run.info.run_id, "result/grad_norm")) == 21


def test_run_records_params_tags_timings_and_artifacts(store_uri, client, tmp_path) -> None:
    run_minimize(store_uri, tmp_path, ["optim=adam", "optim.lr=0.5"])
    (run,) = runs_of(client, "minimize")
    params = run.data.params
    assert params["optim.lr"] == "0.5"
    assert params["optim._target_"] == "torch.optim.Adam"
    assert params["task.steps"] == "20"
    assert params["task.init.x"] == "10.0"
    assert params["device"] == "cpu"  # what device=auto resolved to
    assert not [key for key in params if key.startswith(("tracking.", "skip_existing"))]
    tags = run.data.tags
    assert tags["task"] == "minimize"
    assert tags["device"] == "cpu"
    assert tags["device.name"]
    assert tags["torch.version"] == torch.__version__
    assert tags["overrides"] == "optim=adam optim.lr=0.5"
    assert run.info.run_name == "minimize optim=adam optim.lr=0.5"
    for phase in ("setup", "task", "total", "optimize", "plot"):
        assert run.data.metrics[f"time/{phase}_s"] >= 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml", "function.png", "loss.png"} <= artifacts
    config_text = Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text()
    assert "lr: 0.5" in config_text
    assert (tmp_path / "out" / "function.png").stat().st_size > 10_000


def test_rosenbrock_in_two_variables_with_lbfgs(store_uri, client, tmp_path) -> None:
    expr = "(1 - x)**2 + 100*(y - x**2)**2"
    loss = run_minimize(
        store_uri,
        tmp_path,
        [
            f'task.expr="{expr}"',
            "task.init={x: -1.5, y: 2.0}",
            "optim=lbfgs",
            "task.steps=10",
            "task.dtype=float64",
        ],
    )
    assert loss < 1e-8
    (run,) = runs_of(client, "minimize")
    assert run.data.metrics["var/x"] == pytest.approx(1.0, abs=1e-5)
    assert run.data.metrics["var/y"] == pytest.approx(1.0, abs=1e-5)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "contour.png" in artifacts


def test_tol_stops_early_and_log_every_thins(store_uri, client, tmp_path) -> None:
    run_minimize(store_uri, tmp_path, ["task.steps=500", "task.tol=1e-3", "tracking.log_every=5"])
    (run,) = runs_of(client, "minimize")
    steps = [step for step, _ in history(client, run.info.run_id, "objective/loss")]
    assert run.data.tags["stop_reason"] == "tol"
    stopped = int(run.data.metrics["result/steps_run"])
    assert stopped < 500
    assert steps[-1] == stopped
    assert all(step % 5 == 0 for step in steps[:-1])
    assert run.data.metrics["result/grad_norm"] < 1e-3


def test_divergence_fails_the_run_with_the_reason(store_uri, client, tmp_path) -> None:
    with pytest.raises(RunFailure, match=r"diverged: .* at step \d+ .*optim\.lr"):
        run_minimize(store_uri, tmp_path, ["optim.lr=50", "task.steps=200"])
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("diverged")
    assert len(history(client, run.info.run_id, "objective/loss")) > 0  # what it recorded is kept


def test_unavailable_device_fails_the_run_and_names_what_exists(store_uri, client, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"device=cuda is not available: .*available: cpu"):
        run_minimize(store_uri, tmp_path, ["device=cuda"])
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FAILED"
    assert "not available" in run.data.tags["error"]
    # Its params are there, so that filtering params.device = 'cuda' in the UI finds it.
    assert run.data.params["device"] == "cuda"
    assert run.data.params["task.steps"] == "20" and run.data.params["optim.lr"] == "0.1"


def test_config_errors_start_no_run(store_uri, client, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"task\.steps must be a positive integer, got 0"):
        run_minimize(store_uri, tmp_path, ["task.steps=0"])
    assert runs_of(client, "minimize") == []


def test_many_variables_and_every_optimizer(tmp_path) -> None:
    recorder = MemoryRecorder()
    ctx = TaskContext(
        device=torch.device("cpu"),
        recorder=recorder,
        optim={"_target_": "torch.optim.Adam", "lr": 0.3},
        seed=0,
        output_dir=tmp_path,
    )
    cfg = minimize.MinimizeConfig(
        expr="(a - 1)**2 + (b + 2)**2 + (c - 3)**2",
        init={"a": 0.0, "b": 0.0, "c": 0.0},
        steps=300,
        dtype="float64",
    )
    assert minimize.run(cfg, ctx) < 1e-6
    assert recorder.last("var/c") == pytest.approx(3.0, abs=1e-3)
    assert set(recorder.figures) == {"loss.png"}  # no picture of a 3-d function
