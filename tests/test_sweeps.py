"""Sweeps end to end: parent and child runs, launchers, failures, resume, named sweeps, Optuna.

Every sweep runs through the real entry point, in-process (``cli.invoke`` with ``sys.argv``,
as ``python -m experiments -m ...`` would) or as a subprocess where the launcher starts
other processes. Results are read back with a plain ``MlflowClient`` on the test's store.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra.experimental.callback import Callback
from mlflow import MlflowClient

from experiments import config, record
from experiments.command import app, exits
from tests.conftest import (
    all_runs,
    compose_config,
    hydra_node,
    run_cli,
    runs_of,
    sigterm_in_a_weakref_callback,
)

PARENT_TAG = "mlflow.parentRunId"
QUICK_MATMUL = ["task.min_run_time_s=0.05", "task.warmup=1"]


def sweep(monkeypatch: pytest.MonkeyPatch, store_uri: str, args: list[str]) -> int:
    """``python -m experiments -m ARGS`` in this process; returns the exit status.

    The store comes from the environment, as a user's would, so that the overrides (and so
    the run names and the summary's rows) are only ``args``.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setattr(sys, "argv", ["experiments", "-m", *args])
    return exits.invoke(app.hydra_main)


def split(runs: list) -> tuple:
    """The one parent run (tag sweep=true) and the other runs, its jobs."""
    parents = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    jobs = [run for run in runs if run.data.tags.get("sweep") != "true"]
    return parents[0], jobs


def summary_of(client: MlflowClient, parent, tmp_path: Path) -> str:
    """The summary table logged to the parent run as ``summary.txt``."""
    assert "summary.txt" in [item.path for item in client.list_artifacts(parent.info.run_id)]
    local = client.download_artifacts(parent.info.run_id, "summary.txt", str(tmp_path))
    return Path(local).read_text()


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of a printed summary table, keyed by the job's overrides."""
    rows = {}
    for line in text.splitlines():
        found = re.match(r"^(\d+)\s+(.+?)\s+(FINISHED|FAILED|SKIPPED)\s+(.*)$", line)
        if found:
            rows[found.group(2)] = [found.group(3), found.group(4)]
    return rows


def assert_children_of(parent, jobs: list, status: str = "FINISHED") -> None:
    assert jobs
    assert {run.data.tags[PARENT_TAG] for run in jobs} == {parent.info.run_id}
    assert {run.info.status for run in jobs} == {status}


@pytest.mark.parametrize(
    ("preset", "task", "sweeper", "launcher", "swept"),
    [
        (
            "matmul_scaling",
            "matmul",
            "BasicSweeper",
            "BasicLauncher",
            "device task.size task.dtype",
        ),
        ("lr_sweep", "minimize", "BasicSweeper", "BasicLauncher", "optim optim.lr"),
        ("lr_search", "minimize", "OptunaSweeper", "BasicLauncher", "optim.lr"),
        ("slurm", "minimize", "BasicSweeper", "SlurmLauncher", None),
        (
            "[matmul_scaling,slurm]",
            "matmul",
            "BasicSweeper",
            "SlurmLauncher",
            "device task.size task.dtype",
        ),
    ],
)
def test_named_sweeps_compose(preset, task, sweeper, launcher, swept) -> None:
    settings = config.validate(compose_config([f"experiment={preset}"]))
    assert settings.task.name == task
    node = hydra_node([f"experiment={preset}"])
    assert node.sweeper._target_.endswith(sweeper)
    assert node.launcher._target_.endswith(launcher)
    params = node.sweeper.params
    assert (" ".join(params) if params else None) == swept


@pytest.mark.parametrize(
    ("launcher", "here"),
    [
        ([], True),
        (["experiment=lr_search"], True),
        (["hydra/launcher=joblib"], False),
        (["hydra/launcher=submitit_local"], False),
        (["experiment=slurm"], False),
    ],
)
def test_the_launching_process_prepares_the_jobs_start_only_where_they_run(launcher, here):
    # Where they run elsewhere, the parent does not import what only a job needs.
    from experiments.sweeps import launching

    assert launching.runs_jobs_here(hydra_node(launcher).launcher) is here


def test_sweep_in_process_groups_jobs_under_a_finished_parent(
    monkeypatch, capfd, store_uri, client, tmp_path
) -> None:
    status = sweep(monkeypatch, store_uri, ["task.steps=3,4,5"])
    out = capfd.readouterr().out
    assert status == 0
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep task.steps=3,4,5"
    assert_children_of(parent, jobs)
    assert sorted(run.data.params["task.steps"] for run in jobs) == ["3", "4", "5"]
    # a job is named by what varies in the sweep; the rest is in the parent's name
    assert sorted(run.info.run_name for run in jobs) == ["steps=3", "steps=4", "steps=5"]
    assert "Sweep 'sweep task.steps=3,4,5': 3 jobs: 3 finished" in out
    printed = table_rows(out)
    assert set(printed) == {"task.steps=3", "task.steps=4", "task.steps=5"}
    assert table_rows(summary_of(client, parent, tmp_path)) == printed
    for run in jobs:  # each row links the job to its run
        assert run.info.run_id in printed[run.data.tags["overrides"]][1]
    # The summary names its objective; the parent holds the best one and its run.
    assert re.search(r"^job\s+overrides\s+status\s+objective/loss\s+reason / run$", out, re.M), out
    best = min(jobs, key=lambda run: run.data.metrics["objective/loss"])
    assert parent.data.metrics["best/loss"] == best.data.metrics["objective/loss"]
    assert parent.data.tags["best_run"] == best.info.run_id
    assert f"best objective/loss: {best.data.metrics['objective/loss']:.6g} (job " in out
    assert f"), run {best.info.run_id}" in out
    page = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    page += "?workflowType=machine_learning"  # MLflow's UI opens on runs, not in GenAI mode
    assert f"Review it with: mlflow ui --backend-store-uri {store_uri}" in out
    assert f"http://127.0.0.1:5000/{page}" in out


@pytest.mark.slow
def test_joblib_workers_on_a_fresh_store(workdir) -> None:
    # Two workers open a store that does not exist yet, and tracking.experiment is swept
    # too, so both create the same experiment at once (race_a, then race_b): the races
    # that half-migrate a new mlflow.db and land MLflow runs in "Default" when they are lost.
    assert not (workdir / "mlflow.db").exists()
    result = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "tracking.experiment=race_a,race_b",
            "task.steps=5,6",
        ],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "4 jobs: 4 finished" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent, jobs = split(all_runs(client))
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 4
    assert_children_of(parent, jobs)
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    assert names[parent.info.experiment_id] == "minimize"
    for run in jobs:
        experiment = names[run.info.experiment_id]
        assert f"tracking.experiment={experiment}" in run.data.tags["overrides"]
    found = sorted((names[run.info.experiment_id], run.data.params["task.steps"]) for run in jobs)
    assert found == [("race_a", "5"), ("race_a", "6"), ("race_b", "5"), ("race_b", "6")]
    assert runs_of(client, "Default") == []


@pytest.mark.usefixtures("store_uri")  # an empty store here: its making is not the point
@pytest.mark.slow
def test_submitit_local_runs_jobs_as_separate_processes(workdir) -> None:
    result = run_cli(
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "task.steps=5,6"],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "2 jobs: 2 finished" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 2
    assert_children_of(parent, jobs)
    # submitit kept each job's own process log: two jobs, two processes
    logs = list((workdir / "outputs" / "multirun").glob("*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2


def test_a_failing_job_in_the_middle(monkeypatch, capfd, store_uri, client, tmp_path) -> None:
    status = sweep(monkeypatch, store_uri, ["optim.lr=0.1,50,0.2", "task.steps=50"])
    captured = capfd.readouterr()
    assert status == 1
    assert "3 jobs: 2 finished, 1 failed" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0]
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "FAILED"
    assert {run.data.tags[PARENT_TAG] for run in jobs} == {parent.info.run_id}
    by_lr = {run.data.params["optim.lr"]: run for run in jobs}
    assert {lr: run.info.status for lr, run in by_lr.items()} == {
        "0.1": "FINISHED",
        "50.0": "FAILED",
        "0.2": "FINISHED",  # ran after the failure
    }
    rows = table_rows(summary_of(client, parent, tmp_path))
    failed_status, failed_note = rows["optim.lr=50 task.steps=50"]
    assert failed_status == "FAILED"
    assert failed_note.startswith("diverged: loss=inf")
    assert failed_note == by_lr["50.0"].data.tags["error"]
    # the comparison report is in the parent with no extra command, a failed job or not
    report = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table.txt", "report/minimize.png", "report/minimize_loss_curves.png"} <= report
    table = client.download_artifacts(parent.info.run_id, "report/table.txt", str(tmp_path))
    assert "FAILED" in Path(table).read_text() and "diverged" in Path(table).read_text()
    local = sorted(p.name for p in Path(parent.data.tags["sweep.dir"], "report").iterdir())
    assert local == sorted(path.rsplit("/", 1)[-1] for path in report)
    # minimize's own two, and every task's two: the loss against the lr, its history
    assert "report: 4 figures logged into the parent run under report/" in captured.out


def test_no_report_is_tried_when_no_job_recorded_a_run(monkeypatch, capfd, store_uri) -> None:
    assert sweep(monkeypatch, store_uri, ["task.steps=0,-1"]) == 1
    captured = capfd.readouterr()
    assert "2 jobs: 2 failed" in captured.out
    said = captured.out + captured.err
    assert "report: " not in said and "report was not made" not in said


def test_a_job_with_an_invalid_config_is_listed_failed_without_a_run(
    monkeypatch, capfd, store_uri, client, tmp_path
) -> None:
    status = sweep(monkeypatch, store_uri, ["task.steps=5,0"])
    out = capfd.readouterr().out
    assert status == 1
    assert "report: 3 figures logged into the parent run" in out  # the job that ran
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "FAILED"
    assert [run.data.params["task.steps"] for run in jobs] == ["5"]  # no run for steps=0
    for text in (out, summary_of(client, parent, tmp_path)):
        assert table_rows(text)["task.steps=0"] == [
            "FAILED",
            "task.steps must be a positive integer, got 0",
        ]


def test_resume_skips_finished_configs_and_reruns_failed_and_missing_ones(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    first = sweep(monkeypatch, store_uri, ["optim.lr=0.1,50,0.2", "task.steps=50"])
    assert first == 1
    before = {run.data.tags["overrides"]: run for run in runs_of(client, "minimize")}
    capfd.readouterr()
    # The same sweep plus one new job, in another output directory: identity is the config.
    second = sweep(
        monkeypatch,
        store_uri,
        [
            "optim.lr=0.1,50,0.2,0.3",
            "task.steps=50",
            "skip_existing=true",
            f"hydra.sweep.dir={workdir / 'elsewhere'}",
        ],
    )
    out = capfd.readouterr().out
    assert second == 1  # lr=50 diverges again
    assert "4 jobs: 1 finished, 1 failed, 2 skipped" in out
    rows = table_rows(out)  # Hydra's sweeper hands on skip_existing as Python spells it: True
    for lr in ("0.1", "0.2"):
        status, note = rows[f"optim.lr={lr} task.steps=50 skip_existing=True"]
        assert status == "SKIPPED"
        assert before[f"optim.lr={lr} task.steps=50"].info.run_id in note  # the run it reused
    assert rows["optim.lr=50 task.steps=50 skip_existing=True"][0] == "FAILED"
    assert rows["optim.lr=0.3 task.steps=50 skip_existing=True"][0] == "FINISHED"
    assert len(list((workdir / "elsewhere").glob("*/outcome.json"))) == 4
    runs = runs_of(client, "minimize")
    parents = [run for run in runs if run.data.tags.get("sweep") == "true"]
    assert [run.info.status for run in parents] == ["FAILED", "FAILED"]
    jobs = [run for run in runs if run.data.tags.get("sweep") != "true"]
    runs_per_lr = {}
    for run in jobs:
        runs_per_lr.setdefault(run.data.params["optim.lr"], []).append(run.info.status)
    assert runs_per_lr == {
        "0.1": ["FINISHED"],  # skipped: not run again
        "0.2": ["FINISHED"],
        "50.0": ["FAILED", "FAILED"],  # failed: run again
        "0.3": ["FINISHED"],  # missing: run
    }
    assert (
        len({run.data.tags["config.hash"] for run in jobs if run.data.params["optim.lr"] == "50.0"})
        == 1
    )
    resumed = parents[-1]
    assert resumed.data.tags["error"].startswith("1 of 4 jobs failed: diverged")
    reused = set(resumed.data.tags["sweep.reused_runs"].split(","))
    assert reused == {before[f"optim.lr={lr} task.steps=50"].info.run_id for lr in ("0.1", "0.2")}
    # a report of the resumed sweep covers its skipped jobs through the runs they reused
    from experiments.sweeps.report import command as report

    selection = report.select(client, parent=resumed.info.run_id)
    assert {run.info.run_id for run in selection.runs} >= reused
    assert len(selection.runs) == 4


def test_lr_sweep_composes_the_grid_of_the_preset(monkeypatch, capfd, store_uri, client) -> None:
    status = sweep(monkeypatch, store_uri, ["experiment=lr_sweep", "task.steps=20"])
    out = capfd.readouterr().out
    assert status == 1  # SGD diverges at the preset's three largest learning rates
    assert "Sweep 'sweep lr_sweep': 20 jobs: 17 finished, 3 failed" in out
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.run_name == "sweep lr_sweep"
    assert {run.data.tags[PARENT_TAG] for run in jobs} == {parent.info.run_id}
    grid = {(run.data.params["optim._target_"], float(run.data.params["optim.lr"])) for run in jobs}
    optimizers = ("SGD", "Adam", "RMSprop", "Adagrad")
    lrs = (1e-4, 1e-3, 1e-2, 0.1, 1.0)
    assert grid == {(f"torch.optim.{name}", lr) for name in optimizers for lr in lrs}
    failed = {
        (run.data.params["optim._target_"], float(run.data.params["optim.lr"]))
        for run in jobs
        if run.info.status == "FAILED"
    }
    assert failed == {("torch.optim.SGD", lr) for lr in (1e-2, 0.1, 1.0)}
    for run in jobs:  # the preset's problem, with the command line's steps
        assert run.data.params["task.expr"] == "(1 - x)**2 + 100*(y - x**2)**2"
        assert run.data.params["task.dtype"] == "float64"
        assert run.data.params["task.steps"] == "20"


def test_matmul_scaling_command_line_replaces_the_presets_sweep_values(
    monkeypatch, capfd, store_uri, client
) -> None:
    args = ["experiment=matmul_scaling", "device=cpu", "task.size=64,128", *QUICK_MATMUL]
    status = sweep(monkeypatch, store_uri, args)
    out = capfd.readouterr().out
    assert status == 0
    assert "4 jobs: 4 finished" in out
    parent, jobs = split(runs_of(client, "matmul"))
    assert parent.info.status == "FINISHED"
    assert_children_of(parent, jobs)
    # device and size come from the command line, dtype still from the preset
    assert sorted(
        (run.data.params["device"], run.data.params["task.size"], run.data.params["task.dtype"])
        for run in jobs
    ) == [
        ("cpu", "128", "bfloat16"),
        ("cpu", "128", "float32"),
        ("cpu", "64", "bfloat16"),
        ("cpu", "64", "float32"),
    ]
    assert all(run.data.metrics["result/gflops"] > 0 for run in jobs)


def test_matmul_scaling_sweeps_both_devices_by_default(monkeypatch, capfd, store_uri) -> None:
    args = ["experiment=matmul_scaling", "task.size=32", "task.dtype=float32", *QUICK_MATMUL]
    status = sweep(monkeypatch, store_uri, args)
    rows = table_rows(capfd.readouterr().out)
    by_device = {key.split()[0]: row for key, row in rows.items()}
    assert set(by_device) == {"device=cpu", "device=cuda"}
    assert by_device["device=cpu"][0] == "FINISHED"
    if not torch.cuda.is_available():  # documented: the cuda jobs fail, saying why
        assert status == 1
        assert by_device["device=cuda"][0] == "FAILED"
        assert by_device["device=cuda"][1].startswith("device=cuda is not available")


def test_optuna_search_gets_each_jobs_objective(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = ["experiment=lr_search", "hydra.sweeper.n_trials=4", "task.steps=10"]
    status = sweep(monkeypatch, store_uri, args)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "Sweep 'sweep lr_search': 4 jobs: 4 finished" in out
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 4
    assert_children_of(parent, jobs)
    assert len({run.data.params["optim.lr"] for run in jobs}) == 4  # four sampled trials
    assert all(1e-4 <= float(run.data.params["optim.lr"]) <= 1.0 for run in jobs)
    (results,) = (workdir / "outputs" / "multirun").glob("*/*/optimization_results.yaml")
    found = yaml.safe_load(results.read_text())
    best = min(jobs, key=lambda run: run.data.metrics["objective/loss"])
    assert found["best_value"] == pytest.approx(best.data.metrics["objective/loss"])
    assert found["best_params"]["optim.lr"] == pytest.approx(float(best.data.params["optim.lr"]))


def _fake_slurm(directory: Path) -> Path:
    """``sbatch`` that keeps the script it was given and refuses it; ``srun`` to be found."""
    directory.mkdir()
    scripts = {
        "sbatch": '#!/bin/sh\ncp "$1" "$SBATCH_SCRIPT_COPY"\necho "sbatch: error: no cluster" >&2\n'
        "exit 1\n",
        "srun": "#!/bin/sh\nexit 1\n",
    }
    for name, text in scripts.items():
        path = directory / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def fake_slurm_here(monkeypatch: pytest.MonkeyPatch, workdir: Path, script: Path) -> None:
    """This process's submitit finds the stand-in ``sbatch``, which keeps ``script``."""
    bin_dir = _fake_slurm(workdir / "fake-slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_SCRIPT_COPY", str(script))


def test_slurm_preset_submits_what_it_documents(monkeypatch, capfd, workdir, store_uri) -> None:
    # No cluster here: a stand-in sbatch records the job script submitit wrote, then refuses.
    script = workdir / "job.sh"
    fake_slurm_here(monkeypatch, workdir, script)
    args = ["experiment=slurm", "task=matmul", "device=cuda", "task.size=1024,4096"]
    assert sweep(monkeypatch, store_uri, args) == 1
    assert "sbatch: error: no cluster" in capfd.readouterr().err
    directives = set(re.findall(r"^#SBATCH (\S+)$", script.read_text(), flags=re.M))
    assert {
        "--array=0-1%2",  # both sizes, at most array_parallelism at once
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--time=30",
        "--nodes=1",
        "--ntasks-per-node=1",
    } <= directives
    assert not any(d.startswith("--partition") for d in directives)  # the cluster's default
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent, jobs = split(runs_of(client, "matmul"))
    assert jobs == []
    assert parent.info.status == "FAILED"  # never left RUNNING


def test_slurm_preset_asks_each_job_of_a_device_sweep_for_its_own_gpus(
    monkeypatch, capfd, workdir, store_uri
) -> None:
    # The stand-in refuses the first array: the cuda:1 job's, asking for its two GPUs.
    script = workdir / "job.sh"
    fake_slurm_here(monkeypatch, workdir, script)
    args = ["experiment=slurm", "device=cuda:1,cpu", "task.steps=5"]
    assert sweep(monkeypatch, store_uri, args) == 1
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "error: Slurm refused the array of job 0 (gpus_per_node=2): sbatch: error: no cluster"
    )
    assert "#SBATCH --gpus-per-node=2\n" in script.read_text()


@pytest.mark.parametrize(
    ("device", "gpus"), [("cpu", None), ("mps", None), ("auto", 1), ("cuda", 1), ("cuda:1", 2)]
)
def test_slurm_preset_asks_for_the_gpus_the_device_needs(device, gpus) -> None:
    # None: no --gpus-per-node line in the job script at all (a CPU sweep needs no GPU).
    launcher = hydra_node(["experiment=slurm", f"device={device}"]).launcher
    assert launcher.gpus_per_node == gpus
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.timeout_min) == (8, 32, 30)


def test_slurm_preset_with_a_bad_device_is_one_line_and_leaves_nothing_running(
    monkeypatch, capfd, workdir, store_uri
) -> None:
    fake_slurm_here(monkeypatch, workdir, Path(os.devnull))
    args = ["experiment=slurm", "device=gpu", "task.steps=5,6"]
    assert sweep(monkeypatch, store_uri, args) == 1
    lines = capfd.readouterr().err.splitlines()
    assert lines == ["error: device must be one of auto, cpu, cuda, cuda:N or mps, got 'gpu'"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert [run.info.status for run in all_runs(client)] == ["FAILED"]  # the parent, closed


@pytest.mark.slow
def test_two_joblib_sweeps_in_one_process_keep_their_own_parents(
    monkeypatch, capfd, store_uri, client
) -> None:
    for steps in ("5,6", "7,8"):
        args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"task.steps={steps}"]
        assert sweep(monkeypatch, store_uri, args) == 0
    runs = runs_of(client, "minimize")
    parents = {run.info.run_id: run.info.run_name for run in runs if run.data.tags.get("sweep")}
    joined = {
        run.data.params["task.steps"]: parents[run.data.tags[PARENT_TAG]]
        for run in runs
        if not run.data.tags.get("sweep")
    }
    assert joined == {
        "5": "sweep task.steps=5,6",
        "6": "sweep task.steps=5,6",
        "7": "sweep task.steps=7,8",
        "8": "sweep task.steps=7,8",
    }


def test_parallel_workers_get_their_share_of_the_cores(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from experiments import process
    from experiments.sweeps import launching

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    launching.share_cores(OmegaConf.create({"n_jobs": 2}))
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    process.restore_env()  # as the sweep's end does
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's choice wins
    launching.share_cores(OmegaConf.create({"n_jobs": 2}))
    process.restore_env()
    assert os.environ["OMP_NUM_THREADS"] == "7"
    launching.share_cores(OmegaConf.create({"timeout_min": 5}))  # not a worker pool: untouched
    assert os.environ["OMP_NUM_THREADS"] == "7"


RUNS_ON_PAST_SIGTERM = """
import signal, sys, time
from experiments.sweeps import outcomes

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a job slow to close its run
outcomes.started(0, ["x=1"], sys.argv[1])
print("running", flush=True)
time.sleep(120)
"""


def test_an_interrupted_sweep_waits_for_its_jobs_as_long_as_its_setting_says(
    tmp_path, caplog
) -> None:
    import subprocess

    from experiments import record
    from experiments.sweeps import stopping

    job_dir = tmp_path / "sweep" / "0"
    job_dir.mkdir(parents=True)
    job = subprocess.Popen(
        [sys.executable, "-c", RUNS_ON_PAST_SIGTERM, str(job_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert job.stdout.readline().strip() == "running"
        settings = record.Settings(stop_wait_s=1)
        began = time.monotonic()
        stopping.stop_jobs(tmp_path / "sweep", tmp_path / "parent.jsonl", None, settings, "test")
        took = time.monotonic() - began
        assert job.poll() is None  # it ignored SIGTERM: still closing its run
    finally:
        job.kill()
        job.communicate()
    assert stopping.stop_wait(settings) <= took < stopping.stop_wait(settings) + 3  # not 10 s
    assert stopping.stop_wait(record.Settings()) == 10  # as before, by default
    (warning,) = [r.getMessage() for r in caplog.records if "still closing" in r.getMessage()]
    assert warning == (
        "job 0 still closing after 3 s (tracking.stop_wait_s + 2 s): left to end alone"
    )


class SigtermDroppedAfterJob(Callback):
    """In the launching process, once job ``after`` has ended: a SIGTERM whose handler runs
    inside a weakref callback, where Python prints its Interrupted and drops it."""

    def __init__(self, after: int) -> None:
        self.after, self.ended = after, 0

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.ended += 1
        if self.ended == self.after:
            sigterm_in_a_weakref_callback()


def test_a_signal_python_dropped_after_the_last_job_ends_the_sweep_killed(
    monkeypatch, capfd, store_uri, client
) -> None:
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_value))
    drop = "+hydra.callbacks.drop"
    args = ["task.steps=3,4", f"{drop}._target_={__name__}.SigtermDroppedAfterJob"]
    status = sweep(monkeypatch, store_uri, [*args, f"{drop}.after=2"])
    err = capfd.readouterr().err
    assert [type(error).__name__ for error in dropped] == ["Interrupted"]  # it was dropped
    assert status == 143, err
    assert "error: terminated (SIGTERM)" in err
    parent, jobs = split(runs_of(client, "minimize"))
    assert parent.info.status == "KILLED"  # not FINISHED: the user's SIGTERM is kept
    assert_children_of(parent, jobs)  # both had ended before it came
    assert len(jobs) == 2


def test_a_signal_while_a_finished_job_closes_stops_the_sweep_after_it(
    monkeypatch, capfd, store_uri, client
) -> None:
    # A SIGTERM that comes while a job's FINISHED run is being closed: the run ends FINISHED,
    # the job's outcome says so (a search tells its trial from it), and then the sweep stops.
    close = record.LiveRun.close
    calls = []

    def close_with_a_signal(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here: deferred while the run closes
        return close(self, *args, **kwargs)

    monkeypatch.setattr(record.LiveRun, "close", close_with_a_signal)
    assert sweep(monkeypatch, store_uri, ["task.steps=3,4"]) == 143
    out, err = capfd.readouterr()
    assert "error: terminated (SIGTERM)" in err
    assert "2 jobs: 1 finished" in out or "1 job: 1 finished" in out, out
    parent, jobs = split(runs_of(client, "minimize"))
    assert [job.info.status for job in jobs] == ["FINISHED"]
    assert parent.info.status == "KILLED"
