"""The worked example, ``examples/digits``: an MLP on scikit-learn's 8x8 digits, a task of its
own package, installed into the tests' environment (``make setup-tests`` does) and run for
real: a run, a joblib sweep, a search with a pruner, a rerun.

Without the example installed these tests are skipped, except under ``CI=true``, where they
fail: CI must test what the README walks through.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiments.command import app, exits
from experiments.reproduce import command as rerun
from tests.conftest import run_cli, runs_of

if importlib.util.find_spec("experiments_digits") is None:
    reason = "examples/digits is not installed: pip install -e examples/digits"
    if os.environ.get("CI") == "true":
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)

QUICK = ["task=digits", "optim=adam", "task.epochs=4"]


def invoke(monkeypatch: pytest.MonkeyPatch, store_uri: str, args: list[str]) -> int:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setattr(sys, "argv", ["experiments", *args])
    return exits.invoke(app.hydra_main)


def test_a_run_records_every_epoch_and_its_confusion_matrix(
    monkeypatch, capfd, store_uri, client
) -> None:
    assert invoke(monkeypatch, store_uri, [*QUICK, "optim.lr=0.01"]) == 0
    (run,) = runs_of(client, "digits")
    assert run.info.status == "FINISHED"
    assert run.data.tags["direction"] == "maximize"
    accuracy = client.get_metric_history(run.info.run_id, "objective/val_accuracy")
    assert [point.step for point in accuracy] == [0, 1, 2, 3]
    assert run.data.metrics["objective/val_accuracy"] > 0.9  # four epochs of adam suffice
    assert run.data.params["data.train"] == "1438" and run.data.params["data.val"] == "359"
    assert run.data.params["optim._target_"] == "torch.optim.Adam"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"confusion.png", "environment.json", "config.yaml"} <= artifacts


@pytest.mark.slow
def test_a_joblib_sweep_names_the_most_accurate_job_best(workdir, store_uri) -> None:
    done = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *QUICK,
            "optim.lr=0.0003,0.03",
            f"tracking.uri={store_uri}",
        ],
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert "2 jobs: 2 finished" in done.stdout
    client = MlflowClient(store_uri)
    runs = runs_of(client, "digits")
    (parent,) = [run for run in runs if run.data.tags.get("sweep") == "true"]
    jobs = [run for run in runs if run.info.run_id != parent.info.run_id]
    best = max(jobs, key=lambda run: run.data.metrics["objective/val_accuracy"])
    assert parent.data.tags["best_run"] == best.info.run_id  # the highest: it maximizes
    assert parent.data.metrics["best/val_accuracy"] == best.data.metrics["objective/val_accuracy"]
    report = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    # Its own figure, drawn by the recording process from the installed package.
    assert {"report/digits_accuracy.png", "report/digits_objective.png"} <= report


@pytest.mark.slow
def test_a_search_with_a_pruner_maximizes_and_agrees_with_mlflow(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [
        "-m",
        "experiment=digits_search",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.prune_after=2",
        "task.epochs=6",
    ]
    assert invoke(monkeypatch, store_uri, args) == 0
    out = capfd.readouterr().out
    assert "6 jobs:" in out
    study = optuna.load_study(
        study_name="digits-search", storage=f"sqlite:///{workdir / 'optuna.db'}"
    )
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # from the task
    trials = study.get_trials()
    runs = {
        int(r.data.tags["trial"]): r for r in runs_of(client, "digits") if "trial" in r.data.tags
    }
    for trial in trials:
        run = runs[trial.number]
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["objective/val_accuracy"] == trial.value
        else:
            assert trial.state == TrialState.PRUNED and run.data.tags.get("pruned")
    assert study.best_value == max(t.value for t in trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow
def test_a_rerun_reproduces_it_within_its_tolerance(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    assert invoke(monkeypatch, store_uri, [*QUICK, "optim.lr=0.01"]) == 0
    (run,) = runs_of(client, "digits")
    capfd.readouterr()
    monkeypatch.chdir(workdir)
    assert rerun.main([run.info.run_id]) == 0
    out = capfd.readouterr().out
    assert "verdict: reproduced" in out
    assert "equal within rel=1e-06 abs=1e-09" in out
