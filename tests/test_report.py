"""The report command: runs read back from a real SQLite store, figures, tables, artifacts."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from experiments import runner
from experiments.errors import ConfigError, RunFailure
from experiments.sweeps.report import assemble, command, selection
from experiments.tasks.minimize import report as minimize_report
from tests.conftest import compose_config, runs_of

MINIMIZE_JOBS = [
    [f"optim={optim}", f"optim.lr={lr}", "task.steps=30"]
    for optim in ("sgd", "adam")
    for lr in (0.01, 0.1)
] + [["optim=sgd", "optim.lr=10", "task.steps=30"]]  # diverges: FAILED
MATMUL_JOBS = [
    ["task=matmul", "device=cpu", f"task.size={size}", "task.min_run_time_s=0.05", "task.warmup=1"]
    for size in (32, 64)
]
DERIVATIVE_JOBS = [
    ["task=derivative"],  # x**2 at 5: f=25, df_dx=10, d2f_dx2=2
    ["task=derivative", 'task.expr="x**2*y + 3*x*y**5 + x**3"', "task.at={x: 1.0, y: 1.0}"],
]


@dataclass
class Store:
    uri: str
    empty_uri: str  # a store with no runs
    client: MlflowClient
    parents: dict[str, str]  # task -> parent run id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store holding a small sweep per task, each under its own parent run."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments()  # creates the schema
        shutil.copy(root / "mlflow.db", root / "empty.db")
        sweeps = {"minimize": MINIMIZE_JOBS, "matmul": MATMUL_JOBS, "derivative": DERIVATIVE_JOBS}
        parents = {task: run_sweep(client, uri, task, jobs, root) for task, jobs in sweeps.items()}
    return Store(uri, f"sqlite:///{root / 'empty.db'}", client, parents)


def run_sweep(client: MlflowClient, uri: str, task: str, jobs: list, root: Path) -> str:
    """Run each job with the runner, then make them children of a new parent run."""
    experiment = client.create_experiment(task)
    parent = client.create_run(experiment, run_name=f"sweep {task}", tags={"sweep": "true"})
    parent_id = parent.info.run_id
    for overrides in jobs:
        try:
            runner.run(compose_config([*overrides, f"tracking.uri={uri}"]), overrides, root / task)
        except (ConfigError, RunFailure):
            pass  # recorded FAILED, as a sweep would go on
    for run in runs_of(client, task):
        if run.info.run_id != parent_id:
            client.set_tag(run.info.run_id, MLFLOW_PARENT_RUN_ID, parent_id)
    client.set_terminated(parent_id)
    return parent_id


def children(store: Store, task: str) -> list:
    found = store.client.search_runs(
        [store.client.get_experiment_by_name(task).experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{store.parents[task]}'",
    )
    return list(found)


def build(store: Store, **which) -> assemble.Report:
    return assemble.build(store.client, selection.select(store.client, **which).runs)


def series(ax) -> dict[str, list[float]]:
    """Each labelled line of an Axes: label -> x data."""
    return {
        line.get_label(): list(line.get_xdata())
        for line in ax.get_lines()
        if not line.get_label().startswith(("_", "noisy"))  # noise: test_review.py
    }


def test_matmul_figure_has_a_line_per_device_and_dtype(store: Store) -> None:
    built = build(store, parent=store.parents["matmul"])
    time_ax, gflops_ax = built.figures["matmul.png"].axes
    for ax in (time_ax, gflops_ax):
        assert series(ax) == {"cpu float32": [32.0, 64.0]}
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert "matmul_speedup.png" not in built.figures  # no GPU runs in this sweep


def synthetic_matmul(client: MlflowClient, experiment: str, status: str, **values) -> None:
    """A matmul run written directly with MLflow, as a GPU machine would have recorded it."""
    tags = {"task": "matmul", "device": values["device"], "dtype": values["dtype"]}
    params = {"task.size": str(values.get("size", "null")), "task.dtype": values["dtype"]}
    params.update({f"task.{key}": str(values[key]) for key in ("m", "k", "n") if key in values})
    metrics = {"time_ms": values["ms"], "gflops": values.get("gflops", 1.0)}
    run = client.create_run(experiment, run_name=f"matmul {values}")
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()],
        params=[Param(key, value) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    client.set_terminated(run.info.run_id, status=status)


def test_speedup_pairs_cpu_and_gpu_runs_of_the_same_size_and_dtype(store: Store) -> None:
    experiment = store.client.create_experiment("matmul-synthetic")
    for size, cpu_ms, gpu_ms in ((32, 2.0, 1.0), (64, 16.0, 2.0)):
        synthetic_matmul(
            store.client,
            experiment,
            "FINISHED",
            device="cpu",
            dtype="float32",
            size=size,
            ms=cpu_ms,
        )
        synthetic_matmul(
            store.client,
            experiment,
            "FINISHED",
            device="cuda:0",
            dtype="float32",
            size=size,
            ms=gpu_ms,
        )
    synthetic_matmul(
        store.client, experiment, "FINISHED", device="cuda:0", dtype="bfloat16", size=64, ms=0.5
    )
    synthetic_matmul(
        store.client, experiment, "FINISHED", device="cpu", dtype="float64", m=8, k=64, n=32, ms=1.0
    )
    synthetic_matmul(
        store.client, experiment, "FAILED", device="cuda:0", dtype="float16", size=32, ms=1.0
    )

    built = build(store, experiment="matmul-synthetic")
    assert series(built.figures["matmul.png"].axes[0]) == {
        "cpu float32": [32.0, 64.0],
        "cpu float64": [pytest.approx(16384 ** (1 / 3))],  # non-square: cube root of m*k*n
        "cuda:0 bfloat16": [64.0],
        "cuda:0 float32": [32.0, 64.0],
    }
    (speedup_ax,) = built.figures["matmul_speedup.png"].axes
    (line,) = [line for line in speedup_ax.get_lines() if line.get_label() == "cuda:0 float32"]
    assert list(line.get_xdata()) == [32.0, 64.0]
    assert list(line.get_ydata()) == [2.0, 8.0]
    assert len(series(speedup_ax)) == 1  # bfloat16 has no CPU run to compare with
    assert "8x" in built.tables["matmul_speedup.txt"]


def test_minimize_figures_have_a_line_per_optimizer_and_per_run(store: Store) -> None:
    built = build(store, parent=store.parents["minimize"])
    loss_ax, steps_ax = built.figures["minimize.png"].axes
    for ax in (loss_ax, steps_ax):
        assert series(ax) == {"Adam": [0.01, 0.1], "SGD": [0.01, 0.1]}
        assert ax.get_xscale() == "log"
    (curves_ax,) = built.figures["minimize_loss_curves.png"].axes
    finished = {" ".join(job) for job in MINIMIZE_JOBS[:4]}
    assert set(series(curves_ax)) == finished  # the FAILED run is left out
    assert all(xs == list(range(31)) for xs in series(curves_ax).values())


def test_every_task_gets_its_objective_against_what_the_runs_vary_and_its_history(
    store: Store,
) -> None:
    built = build(store, parent=store.parents["minimize"])
    figure = built.figures["minimize_objective.png"]
    assert "(lower is better)" in figure._suptitle.get_text()
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == ["optim", "optim.lr"]  # not task.steps: fixed
    optim, lr = panels
    assert [label.get_text() for label in optim.get_xticklabels()] == ["adam", "sgd"]
    assert lr.get_xscale() == "linear" and sorted(series(lr)["runs"]) == [0.01, 0.01, 0.1, 0.1]
    (history,) = built.figures["minimize_history.png"].axes
    finished = {" ".join(job) for job in MINIMIZE_JOBS[:4]}
    assert set(series(history)) == finished  # one curve per FINISHED run
    assert history.get_ylabel() == "objective/loss"
    # Matmul's objective is one number per run: no history; its sizes on a log scale.
    matmul = build(store, parent=store.parents["matmul"])
    assert "matmul_history.png" not in matmul.figures
    (size,) = [ax for ax in matmul.figures["matmul_objective.png"].axes if ax.get_visible()]
    assert size.get_xlabel() == "task.size" and series(size)["runs"] == [32.0, 64.0]


def test_steps_to_converge_of_the_sweep(store: Store) -> None:
    runs = [run for run in children(store, "minimize") if run.info.status == "FINISHED"]
    views = [assemble.view(store.client, run) for run in runs]
    found = {r.label: r for r in minimize_report.minimize_results(views)}
    sgd = found["optim=sgd optim.lr=0.1 task.steps=30"]
    assert 5 < sgd.converged_at < 30  # |x + 1| shrinks 0.4x per step: settled near step 10
    assert sgd.final_loss == pytest.approx(-12.0)
    assert math.isnan(found["optim=adam optim.lr=0.01 task.steps=30"].converged_at)


@pytest.mark.parametrize(
    ("steps", "losses", "stopped_at", "expected"),
    [
        ([0, 1, 2, 3], [5.0, 1.0, 1e-9, 0.0], None, 2),  # within 1e-6 * (1 + 0) from step 2
        ([0, 5, 10, 12], [4.0, -2.0, -2.0, -2.0], None, 5),  # sparse history (log_every)
        ([0, 1, 2], [3.0, 2.0, 1.0], None, math.nan),  # still moving at the end
        ([0, 1, 2, 3, 4, 5, 6, 7], [9.0, 3.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], 7, 7),  # by tol
    ],
)
def test_steps_to_converge(steps, losses, stopped_at, expected) -> None:
    found = minimize_report.steps_to_converge(steps, losses, stopped_at)
    assert (math.isnan(found) and math.isnan(expected)) or found == expected


def test_derivative_table_lists_values_and_check_errors(store: Store) -> None:
    built = build(store, parent=store.parents["derivative"])
    assert set(built.figures) == {"derivative_objective.png"}  # f against expr and point
    lines = built.tables["derivative.txt"].splitlines()
    assert lines[0].split()[:3] == ["run", "status", "expr"]
    assert "max abs err" in lines[0] and "max rel err" in lines[0]
    (square,) = [line for line in lines if "x**2 " in line]
    assert "f=25 df_dx=10 d2f_dx2=2" in square and "FINISHED" in square
    (two_variables,) = [line for line in lines if "3*x*y**5" in line]
    assert "x=1.0 y=1.0" in two_variables and "df_dx=8 df_dy=16" in two_variables


def test_table_lists_every_run_with_status_and_error(store: Store, tmp_path: Path, capsys) -> None:
    parent = store.parents["minimize"]
    status = command.main(["--parent", parent, "--tracking-uri", store.uri, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    runs = children(store, "minimize")
    assert len(runs) == len(MINIMIZE_JOBS)
    for run in runs:
        (line,) = [line for line in out.splitlines() if line.startswith(run.info.run_name + "  ")]
        assert run.info.status in line
        if run.info.status == "FAILED":
            assert run.data.tags["error"] in line and line.endswith("try a smaller optim.lr")
        else:
            assert f"loss={run.data.metrics['objective/loss']:.6g}" in line
    assert "5 runs: 1 failed, 4 finished" in out
    assert (tmp_path / "table.txt").read_text() in out


def test_report_is_logged_to_the_parent_and_written_to_out(store: Store, tmp_path: Path) -> None:
    parent = store.parents["matmul"]
    assert (
        command.main(["--parent", parent, "--tracking-uri", store.uri, "--out", str(tmp_path)]) == 0
    )
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["matmul.png", "matmul_objective.png", "table.txt"]
    logged = sorted(item.path for item in store.client.list_artifacts(parent, "report"))
    assert logged == [f"report/{name}" for name in written]
    table = store.client.download_artifacts(parent, "report/table.txt", str(tmp_path / "back"))
    assert Path(table).read_text() == (tmp_path / "table.txt").read_text()


def test_experiment_report_leaves_out_the_sweep_parent(
    store: Store, tmp_path: Path, capsys
) -> None:
    assert (
        command.main(
            ["--experiment", "minimize", "--tracking-uri", store.uri, "--out", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Experiment 'minimize': 5 runs" in out
    assert "sweep minimize" not in out


def test_default_is_the_latest_sweep_into_outputs_reports(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert command.main([]) == 0
    latest = list(store.parents)[-1]
    assert f"Sweep 'sweep {latest}'" in capsys.readouterr().out
    (written,) = (tmp_path / "outputs" / "reports").iterdir()
    assert written.name.startswith(f"sweep-{latest}-")
    assert (written / "table.txt").is_file()


def test_two_reports_in_the_same_second_get_their_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(assemble.time, "strftime", lambda _: "20250101-120000")
    first = assemble.default_out("sweep optim=sgd,adam")
    assert first == Path("outputs/reports/sweep-optim=sgd-adam-20250101-120000")
    first.mkdir(parents=True)
    assert assemble.default_out("sweep optim=sgd,adam") == first.with_name(first.name + "-2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda s: ["--parent", "0" * 32], "--parent 0000"),
        (lambda s: ["--parent", children(s, "matmul")[0].info.run_id], "no runs found under"),
        (lambda s: ["--experiment", "nope"], "no such experiment; experiments: Default, "),
        (lambda s: ["--tracking-uri", s.empty_uri], "no sweep (parent run) in this store"),
        (lambda s: ["--tracking-uri", s.empty_uri, "--experiment", "Default"], "no runs found"),
        (lambda s: ["--tracking-uri", "sqlite:///missing/mlflow.db"], "no tracking store at"),
        (lambda s: ["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow server"),
    ],
)
def test_errors_are_one_line_and_exit_1(store: Store, capsys, args, message: str) -> None:
    argv = args(store)
    if "--tracking-uri" not in argv:
        argv += ["--tracking-uri", store.uri]
    assert command.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: ") and message in line


@pytest.mark.slow
def test_command_line_as_the_readme_shows_it(store: Store, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "experiments.report", "--tracking-uri", store.uri]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--experiment", "matmul", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "matmul device=cpu task.size=64" in done.stdout
        and (tmp_path / "r" / "matmul.png").is_file()
    )
    failed = subprocess.run(
        [*command, "--experiment", "nope"], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    assert (
        failed.stderr.splitlines() == [failed.stderr.strip()] and "Traceback" not in failed.stderr
    )
    assert time.perf_counter() - started < 60
