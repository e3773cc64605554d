"""A task of one's own: registered by an installed package (or named in EXPERIMENTS_TASKS),
selected as a built-in is, run, swept, searched, judged and reported as they are; the bad
registrations, each in one line.

The packages are the tests' own, written with their dist-info (tests/outside.py): real
metadata, real YAML, real imports, real MLflow stores, real signals.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from experiments.command import app, exits
from experiments.sweeps.report import command as report
from experiments.tasks import registry
from tests import outside
from tests.conftest import runs_of

SHAPES = {"shapes": "shapes_task:TASK", "notatask": "shapes_task:NOT_A_TASK"}


def invoke(monkeypatch: pytest.MonkeyPatch, store_uri: str, args: list[str]) -> int:
    """``python -m experiments ARGS`` in this process; returns the exit status."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setattr(sys, "argv", ["experiments", *args])
    return exits.invoke(app.hydra_main)


def forget_packages(prefixes: tuple[str, ...]) -> None:
    for name in [name for name in sys.modules if name.startswith(prefixes)]:
        del sys.modules[name]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tests' own package installed (``shapes-task``, registering ``shapes``)."""
    found = outside.install(tmp_path / "site", "shapes-task", outside.SHAPES, SHAPES)
    monkeypatch.syspath_prepend(str(found))
    registry.forget()
    yield found
    registry.forget()
    forget_packages(("shapes_task", "broken_task", "other_shapes", "mytask"))


def only_run(client: MlflowClient, experiment: str):
    (run,) = runs_of(client, experiment)
    return run


def test_a_task_of_ones_own_runs_as_the_built_in_ones_do(
    site, monkeypatch, capfd, store_uri, client, workdir
) -> None:
    assert invoke(monkeypatch, store_uri, ["task=shapes", "task.side=3"]) == 0
    run = only_run(client, "shapes")  # its own experiment, by its name
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["task"], tags["objective"], tags["direction"]) == (
        "shapes",
        "objective/score",
        "maximize",
    )
    assert tags["verdict"] == "tolerance rel=1e-09 abs=0"
    assert params["task.side"] == "3.0" and params["task.name"] == "shapes"
    assert "optim.lr" not in params  # it uses no optimizer
    history = client.get_metric_history(run.info.run_id, "objective/score")
    assert [point.step for point in history] == [0, 1, 2, 3, 4]
    # What its context said: the run's id, its directory, and every generator seeded.
    (directory,) = (workdir / "outputs" / "runs").glob("*/*")
    seen = json.loads((directory / "context.json").read_text())
    assert seen["run_id"] == run.info.run_id and seen["output_dir"] == str(directory)
    assert seen["generator"] == float(torch.rand(1, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert (seen["torch"], seen["numpy"], seen["random"]) == (
        float(torch.rand(1)),
        float(np.random.rand()),
        random.random(),
    )
    # A figure holding a class of the task's own package: drawn in the run's process.
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"sides.png", "environment.json", "config.yaml"} <= artifacts
    environment = client.download_artifacts(run.info.run_id, "environment.json", str(workdir))
    task = json.loads(Path(environment).read_text())["task"]
    assert task == {"name": "shapes", "package": "shapes-task", "version": "0.1.0"}
    assert "error" not in capfd.readouterr().err


def test_a_sweep_of_it_ranks_its_jobs_in_its_direction_and_reports_them(
    site, monkeypatch, capfd, store_uri, client, tmp_path
) -> None:
    assert invoke(monkeypatch, store_uri, ["-m", "task=shapes", "task.side=1,3,2"]) == 0
    out = capfd.readouterr().out
    assert "3 jobs: 3 finished" in out
    runs = runs_of(client, "shapes")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    jobs = {
        run.data.params["task.side"]: run for run in runs if run.info.run_id != parent.info.run_id
    }
    best = jobs["3.0"]  # the highest score: the task maximizes it
    assert parent.data.tags["best_run"] == best.info.run_id
    assert parent.data.metrics["best/score"] == best.data.metrics["objective/score"]
    assert f"best objective/score: {best.data.metrics['objective/score']:.6g}" in out
    # The report, made again here (the sweep's own was made by its recording process, which
    # an installed package reaches; this test's package is on this process's path alone).
    out = tmp_path / "report"
    args = ["--parent", parent.info.run_id, "--tracking-uri", store_uri, "--out", str(out)]
    assert report.main(args) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "shapes.txt",  # its own report's table
        "shapes_history.png",  # the score per step, per job: with no code of its own
        "shapes_objective.png",  # the score against task.side
        "table.txt",
    ]
    table = (out / "table.txt").read_text()
    assert "score=" in table and "area=4" in table  # its objective, and what Task.table names
    assert (
        "task.side=3: side 3.0" in (out / "shapes.txt").read_text()
        or "side 3.0" in (out / "shapes.txt").read_text()
    )


def test_a_search_of_it_maximizes_as_the_task_says(
    site, monkeypatch, capfd, store_uri, workdir
) -> None:
    args = [
        "-m",
        "task=shapes",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.storage=memory",
        "hydra.sweeper.sampler.name=random",
        "task.side=interval(1,3)",
    ]
    assert invoke(monkeypatch, store_uri, args) == 0
    assert "3 jobs: 3 finished" in capfd.readouterr().out
    (results,) = (workdir / "outputs" / "multirun").glob("*/*/optimization_results.yaml")
    best = results.read_text()
    client = MlflowClient(store_uri)
    scores = [
        run.data.metrics["objective/score"]
        for run in runs_of(client, "shapes")
        if "trial" in run.data.tags
    ]
    assert f"best_value: {max(scores)}" in best


def test_its_verdict_is_the_one_it_declares(site, monkeypatch, capfd, store_uri, client) -> None:
    for _ in range(2):
        assert invoke(monkeypatch, store_uri, ["task=shapes"]) == 0
    first, second = runs_of(client, "shapes")
    capfd.readouterr()
    ids = [first.info.run_id, second.info.run_id]
    assert report.main(["--compare", *ids, "--tracking-uri", store_uri]) == 0
    out = capfd.readouterr().out
    assert "verdict: reproduced" in out and "equal within rel=1e-09 abs=0" in out


@pytest.mark.parametrize(
    ("check", "recorded", "stopped"),
    [(True, [0, 1, 2], {"after_step": 2}), (False, [0, 1], None)],
    ids=["checks", "does-not-check"],
)
def test_a_task_that_checks_for_a_stop_stops_at_its_step_boundary(
    site, monkeypatch, capfd, store_uri, client, workdir, check, recorded, stopped
) -> None:
    # The task sends itself a real SIGTERM during step 2. One that looks at
    # ctx.stop_requested finishes the step, records it, saves, and stops; one that does not
    # is stopped where the signal finds it, as every task was before.
    args = ["task=shapes", "task.steps=10", "task.stop_at=2", f"task.check_stop={check}"]
    assert invoke(monkeypatch, store_uri, args) == 143
    assert "error: terminated (SIGTERM)" in capfd.readouterr().err
    run = only_run(client, "shapes")
    assert run.info.status == "KILLED" and run.data.tags["error"] == "terminated (SIGTERM)"
    history = client.get_metric_history(run.info.run_id, "objective/score")
    assert sorted(point.step for point in history) == recorded
    (directory,) = (workdir / "outputs" / "runs").glob("*/*")
    marker = directory / "stopped.json"
    assert (json.loads(marker.read_text()) if marker.exists() else None) == stopped


def test_a_module_of_ones_own_is_named_in_the_environment(
    site, monkeypatch, capfd, store_uri, client, workdir
) -> None:
    (workdir / "mytask.py").write_text(
        "from dataclasses import dataclass\n"
        "from experiments.api import Task\n\n"
        "@dataclass\nclass Mine:\n    steps: int = 3\n\n"
        "def run(cfg, ctx):\n"
        "    ctx.recorder.log_metrics({'objective/steps': float(cfg.steps)})\n"
        "    return float(cfg.steps)\n\n"
        "TASK = Task(name='mine', settings=Mine, run=run, objective='steps')\n"
    )
    monkeypatch.syspath_prepend(str(workdir))  # as python -m puts the working directory
    monkeypatch.setenv(registry.ENV, "mine=mytask:TASK")
    registry.forget()
    # No YAML of its own: it composes from its dataclass's defaults.
    assert invoke(monkeypatch, store_uri, ["task=mine", "task.steps=4"]) == 0
    run = only_run(client, "mine")
    assert run.info.status == "FINISHED" and run.data.metrics["objective/steps"] == 4.0


@pytest.mark.parametrize(("side", "status"), [("5.0", 0), ("abc", 1)])
def test_a_config_of_ones_own_that_does_not_extend_the_schema_is_checked_against_it(
    site, monkeypatch, capfd, store_uri, client, workdir, side, status
) -> None:
    # A config of the task in a directory of one's own, without `- /shapes_schema@_here_`:
    # the task's settings still decide what its keys may hold.
    (workdir / "conf" / "task").mkdir(parents=True)
    (workdir / "conf" / "task" / "big_shapes.yaml").write_text(f"name: shapes\nside: {side}\n")
    assert invoke(monkeypatch, store_uri, ["--config-dir", "conf", "task=big_shapes"]) == status
    err = capfd.readouterr().err
    if status == 0:
        assert only_run(client, "shapes").data.params["task.side"] == "5.0"
    else:
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert line == (
            "error: task.side=abc: Value 'abc' of type 'str' could not be converted to Float"
        ), err
        assert runs_of(client, "shapes") == []


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_an_editable_checkout_of_the_task_is_recorded_beside_this_package(
    monkeypatch, capfd, store_uri, client, tmp_path
) -> None:
    repo = tmp_path / "shapes-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "work")
    outside.install(repo / "src", "shapes-task", outside.SHAPES, {"shapes": "shapes_task:TASK"})
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "shapes")
    (repo / "src" / "shapes_task" / "work.py").write_text(
        (repo / "src" / "shapes_task" / "work.py").read_text() + "\n# an edit not committed\n"
    )
    # Installed editable: its dist-info says where from (PEP 610), as pip -e writes it.
    site = outside.install(tmp_path / "site", "shapes-task", {}, SHAPES, editable=repo)
    monkeypatch.syspath_prepend(str(repo / "src"))
    monkeypatch.syspath_prepend(str(site))
    registry.forget()
    try:
        assert invoke(monkeypatch, store_uri, ["task=shapes"]) == 0
    finally:
        registry.forget()
        forget_packages(("shapes_task",))
    run = only_run(client, "shapes")
    local = client.download_artifacts(run.info.run_id, "environment.json", str(tmp_path / "a"))
    task = json.loads(Path(local).read_text())["task"]
    assert task["checkout"] == str(repo.resolve())
    assert task["code"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert task["code"]["branch"] == "work" and task["code"]["dirty"] is True
    diff = client.download_artifacts(run.info.run_id, "task.code.diff", str(tmp_path / "b"))
    assert "+# an edit not committed" in Path(diff).read_text()


BROKEN = {"broken_task/__init__.py": "raise RuntimeError('its GPU library is missing')\n"}
OTHER = {
    "other_shapes/__init__.py": (
        "from dataclasses import dataclass\nfrom experiments.api import Task\n"
        "@dataclass\nclass S:\n    x: int = 1\n"
        "TASK = Task(name='shapes', settings=S, run='other_shapes:run', objective='x')\n"
    )
}


@pytest.mark.parametrize(
    ("args", "setup", "error"),
    [
        (
            ["task=broken"],
            "broken",
            "error: task=broken: broken-task 0.1.0 failed to import broken_task: RuntimeError: "
            "its GPU library is missing",
        ),
        (
            ["task=notatask"],
            None,
            "error: task=notatask: shapes_task:NOT_A_TASK (shapes-task 0.1.0) is not an "
            "experiments.api.Task but dict",
        ),
        (
            ["task=shapes"],
            "twice",
            "error: task=shapes: registered twice, by other-shapes 0.1.0 (other_shapes:TASK) and "
            "shapes-task 0.1.0 (shapes_task:TASK): keep one",
        ),
        (
            ["--config-dir", "conf", "task=nosuch"],
            "yaml",
            "error: task=nosuch: its config extends nosuch_schema, but no task 'nosuch' is "
            "registered; the tasks found: {found}",
        ),
        (
            ["task=nope"],
            None,
            "error: task=nope: no such task; the tasks found: {found}",
        ),
        (
            ["task=shapes"],
            "environment",
            "error: EXPERIMENTS_TASKS=oops: 'oops' is not name=module:attribute",
        ),
        (
            ["task=shapes", "task.steps=0"],
            None,
            "error: task.steps must be a positive integer, got 0",
        ),
    ],
    ids=["broken", "not-a-task", "twice", "no-schema", "unknown", "environment", "value"],
)
def test_a_bad_registration_is_one_line_and_records_nothing(
    site, tmp_path, monkeypatch, capfd, store_uri, client, workdir, args, setup, error
) -> None:
    if setup == "broken":
        outside.install(site, "broken-task", BROKEN, {"broken": "broken_task:TASK"})
    if setup == "twice":
        other = outside.install(
            tmp_path / "other", "other-shapes", OTHER, {"shapes": "other_shapes:TASK"}
        )
        monkeypatch.syspath_prepend(str(other))
    if setup == "yaml":
        (workdir / "conf" / "task").mkdir(parents=True)
        (workdir / "conf" / "task" / "nosuch.yaml").write_text(
            "defaults:\n  - /nosuch_schema@_here_\n"
        )
    if setup == "environment":
        monkeypatch.setenv(registry.ENV, "oops")
    registry.forget()
    assert invoke(monkeypatch, store_uri, args) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if "{found}" in error:  # every task registered here (the example's too, where installed)
        assert {"derivative", "matmul", "minimize", "notatask", "shapes"} <= set(registry.names())
        error = error.replace("{found}", ", ".join(registry.names()))
    assert lines == [error], err
    assert runs_of(client, "shapes") == [] and runs_of(client, "broken") == []
    if setup == "broken":  # a broken package breaks only the commands that select it
        registry.forget()
        assert registry.load("shapes").name == "shapes"


@pytest.mark.slow
def test_a_command_imports_the_task_it_selects_and_no_other(site, workdir) -> None:
    script = (
        "import json, sys\n"
        "from experiments.command import app, exits\n"
        "sys.argv = ['experiments', 'task=derivative']\n"
        "status = exits.invoke(app.hydra_main)\n"
        "tasks = ('experiments.tasks.', 'shapes')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(tasks))\n"
        "print(json.dumps({'status': status, 'loaded': loaded}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 0
    loaded = found["loaded"]
    assert "experiments.tasks.derivative.task" in loaded
    others = [
        m
        for m in loaded
        if m.startswith(("experiments.tasks.minimize", "experiments.tasks.matmul", "shapes"))
    ]
    assert others == []
