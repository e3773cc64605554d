"""The project's search (``hydra/sweeper=optuna``): a study kept beside the runs, topped up by
a rerun, retried after a kill, shared by searches running at once; bad settings in one line.

Real Optuna storages (SQLite, Optuna's journal file), real MLflow stores, real Hydra sweeps,
real signals to real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiments.record import liveness
from experiments.sweeps.outcomes import Outcome
from experiments.sweeps.search import study as studies
from tests.conftest import run_cli, runs_of
from tests.test_faults import start_cli, wait_for_points
from tests.test_sweeps import sweep

SEARCH = ["experiment=lr_search", "task.steps=10"]


def the_study(storage: str, name: str | None = None) -> optuna.Study:
    """The one study in ``storage`` (or the one named ``name``)."""
    if name is None:
        (summary,) = optuna.get_all_study_summaries(storage)
        name = summary.study_name
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(client) -> dict[int, object]:
    """The search's child runs by their trial number (the ``trial`` tag)."""
    runs = [run for run in runs_of(client, "minimize") if run.data.tags.get("sweep") != "true"]
    found = {int(run.data.tags["trial"]): run for run in runs}
    assert len(found) == len(runs), "two runs of one trial"
    return found


def test_a_search_is_kept_beside_the_runs_and_a_rerun_tops_it_up(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    assert sweep(monkeypatch, store_uri, [*SEARCH, "hydra.sweeper.n_trials=3"]) == 0
    capfd.readouterr()
    assert sweep(monkeypatch, store_uri, [*SEARCH, "hydra.sweeper.n_trials=5"]) == 0
    out = capfd.readouterr().out
    assert "Sweep 'sweep lr_search': 2 jobs: 2 finished" in out  # the 2 missing, not 5 more
    assert "it held 3 trials before this search, n_trials=5" in out
    study = the_study(f"sqlite:///{workdir / 'optuna.db'}")  # beside mlflow.db, a file its own
    assert study.study_name == "experiment=lr_search task.steps=10"
    trials = study.get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 5
    # Reseeded for the trials it holds, the sampler does not propose the first ones again.
    assert len({trial.params["optim.lr"] for trial in trials}) == 5
    runs = trial_runs(client)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    for trial in trials:
        run = runs[trial.number]
        assert float(run.data.params["optim.lr"]) == pytest.approx(trial.params["optim.lr"])
        assert run.data.metrics["objective/loss"] == pytest.approx(trial.value)

    # Nothing left to run: the parent finishes, and says why no job ran.
    assert sweep(monkeypatch, store_uri, [*SEARCH, "hydra.sweeper.n_trials=5"]) == 0
    out = capfd.readouterr().out
    assert "Sweep 'sweep lr_search': 0 jobs" in out and "it held 5 trials" in out
    parents = [r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true"]
    newest = max(parents, key=lambda run: run.info.start_time)
    assert newest.info.status == "FINISHED"


def test_a_grid_search_kept_in_memory_runs_each_point_once(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [
        *SEARCH,
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.storage=memory",
        "optim.lr=choice(0.1,0.01)",
        "task.steps=range(5,15,5)",  # 5 and 10: the stop is left out, as in a grid sweep
    ]
    assert sweep(monkeypatch, store_uri, args) == 0
    assert "4 jobs: 4 finished" in capfd.readouterr().out  # n_trials=20 capped to the grid
    found = {
        (r.data.params["optim.lr"], r.data.params["task.steps"])
        for r in trial_runs(client).values()
    }
    assert found == {("0.1", "5"), ("0.1", "10"), ("0.01", "5"), ("0.01", "10")}
    assert not (workdir / "optuna.db").exists()


def test_a_qmc_search_over_two_settings_draws_their_importances(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [
        *SEARCH,
        "hydra.sweeper.sampler.name=qmc",
        "hydra.sweeper.storage=memory",
        "hydra.sweeper.n_trials=4",
        "optim.weight_decay=interval(0.0, 0.01)",  # a second dimension, from the command line
    ]
    assert sweep(monkeypatch, store_uri, args) == 0
    out, err = capfd.readouterr()
    assert "4 jobs: 4 finished" in out
    assert "Warning" not in err  # Optuna's "experimental": the user chose it
    # The points are Optuna's QMC sampler's with the preset's seed: asked the same way in a
    # study of the test's own, it proposes the same ones.
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        replica = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=0))
    space = {
        "optim.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "optim.weight_decay": optuna.distributions.FloatDistribution(0.0, 0.01),
    }
    expected = []
    for _ in range(4):
        trial = replica.ask(space)
        replica.tell(trial, 1.0)
        expected.append(trial.params)
    runs = trial_runs(client)
    assert sorted(runs) == [0, 1, 2, 3]
    for number, params in enumerate(expected):
        recorded = runs[number].data.params
        for key, value in params.items():
            assert float(recorded[key]) == pytest.approx(value), (number, key)
    # With two parameters, Optuna's importance and parallel-coordinate figures are drawn too.
    (parent,) = [r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true"]
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/optimization_history.png",
        "report/slice.png",
        "report/param_importances.png",
        "report/parallel_coordinate.png",
    } <= figures, figures


def test_a_study_in_optunas_journal_file_is_topped_up_too(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    journal = workdir / "shared" / "study.journal"
    args = [
        *SEARCH,
        f"hydra.sweeper.storage=journal:{journal}",
        "hydra.sweeper.sampler.name=random",
    ]
    assert sweep(monkeypatch, store_uri, [*args, "hydra.sweeper.n_trials=2"]) == 0
    assert sweep(monkeypatch, store_uri, [*args, "hydra.sweeper.n_trials=3"]) == 0
    assert "1 job: 1 finished" in capfd.readouterr().out
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    assert [t.state for t in the_study(storage).get_trials()] == [TrialState.COMPLETE] * 3
    assert sorted(trial_runs(client)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["hydra.sweeper.sampler.name=cmaes"],
            "error: hydra.sweeper.sampler.name=cmaes: not a sampler here (tpe, random, grid, qmc)",
        ),
        (
            ["optim.lr=interval(1,0.5)"],
            "error: optim.lr=interval(1,0.5): interval(1.0, 0.5) is empty",
        ),
        (
            # Quoted, so Hydra keeps it a string for the search to parse, which it cannot.
            ["hydra.sweeper.params={optim.lr:'interval(1'}"],
            "error: hydra.sweeper.params.optim.lr: not a value or a sweep Hydra can parse: ",
        ),
        (
            ["hydra.sweeper.storage=sqlite:////no/such/dir/optuna.db"],
            "error: hydra.sweeper.storage=sqlite:////no/such/dir/optuna.db: no directory "
            "/no/such/dir",
        ),
        (
            ["hydra.sweeper.storage=nosuchdb://somewhere/x"],
            "error: hydra.sweeper.storage=nosuchdb://somewhere/x: cannot open it: ",
        ),
        (
            ["hydra.sweeper.direction=maximize"],
            "error: hydra.sweeper.direction=maximize: task minimize minimizes its objective "
            "objective/loss; leave hydra.sweeper.direction unset",
        ),
        (
            ["hydra.sweeper.study_name=old"],  # made by a search of a task that maximizes
            "error: hydra.sweeper.study_name=old: the study exists to maximize, this search is "
            "to minimize; name another with hydra.sweeper.study_name",
        ),
        (
            ["hydra.sweeper.sampler.name=grid"],
            "error: hydra.sweeper.params.optim.lr: sampler.name=grid needs choice(...) or "
            "range(...), not an interval",
        ),
        (
            ["hydra.sweeper.pruner=asha"],
            "error: hydra.sweeper.pruner=asha: not a pruner here (none, median, hyperband)",
        ),
    ],
    ids=[
        "sampler",
        "space",
        "unparsable",
        "directory",
        "url",
        "direction",
        "study",
        "grid",
        "pruner",
    ],
)
def test_a_bad_setting_is_one_line_and_the_sweep_ends_failed(
    monkeypatch, capfd, store_uri, client, workdir, args, error
) -> None:
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="old", direction="maximize")
    assert sweep(monkeypatch, store_uri, [*SEARCH, *args]) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(error), err
    assert "Traceback" not in err
    (parent,) = runs_of(client, "minimize")
    assert parent.info.status == "FAILED"  # never left RUNNING


# Eight rates, some far behind the others early in 40 steps: a pruner stops them.
PRUNED_SEARCH = [
    "task.steps=40",
    "hydra.sweeper.sampler.name=grid",
    "optim.lr=choice(0.2,0.15,0.1,0.05,0.02,0.0002,0.0001,0.0003)",
    "hydra.sweeper.n_trials=8",
    "hydra.sweeper.prune_every=5",
]


def assert_pruned_alike(client, study: optuna.Study, out: str, pruner: str = "median") -> None:
    """The study's PRUNED trials are the sweep's PRUNED jobs and its runs ended early: KILLED,
    tagged pruned at the step they stopped at, which their loss history ends with."""
    trials = study.get_trials()
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and sorted(pruned + complete) == list(range(8)), [t.state for t in trials]
    assert f"8 jobs: {len(complete)} finished, {len(pruned)} pruned" in out, out
    runs = trial_runs(client)
    for number in pruned:
        run, trial = runs[number], trials[number]
        step = int(run.data.tags["pruned"])
        assert run.info.status == "KILLED", run.info
        assert run.data.tags["error"].startswith(f"pruned at step {step} by the {pruner} pruner")
        assert max(trial.intermediate_values) == step < 39
        history = client.get_metric_history(run.info.run_id, "objective/loss")
        assert max(point.step for point in history) == step
        assert trial.intermediate_values[step] == pytest.approx(history[-1].value)
    for number in complete:
        assert runs[number].info.status == "FINISHED"
        assert "pruned" not in runs[number].data.tags


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_a_pruner_stops_hopeless_trials_and_the_runs_say_so(
    monkeypatch, capfd, store_uri, client, workdir, pruner
) -> None:
    args = [*SEARCH, *PRUNED_SEARCH, f"hydra.sweeper.pruner={pruner}"]
    assert sweep(monkeypatch, store_uri, args) == 0  # a pruned trial is no failure
    out = capfd.readouterr().out
    study = the_study(f"sqlite:///{workdir / 'optuna.db'}")
    assert_pruned_alike(client, study, out, pruner)
    if pruner == "hyperband":  # Optuna's HyperbandPruner, not the median one by another name:
        pruned = {
            t.number: max(t.intermediate_values)
            for t in study.get_trials()
            if t.state == TrialState.PRUNED
        }
        # it races trials from the first (the median pruner waits for 5 complete ones) and
        # stops them only at its rungs, steps 5 and 15 (5 * 3**k), not at every report.
        assert min(pruned) < 5 and set(pruned.values()) <= {5, 15}, pruned
    (parent,) = [r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FINISHED"
    counts = [line for line in out.splitlines() if "8 jobs: " in line][0]
    assert parent.data.tags["jobs"] == counts[counts.index("8 jobs: ") :]  # pruned ones too
    assert " pruned" in parent.data.tags["jobs"]
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/intermediate_values.png" in figures


@pytest.mark.slow
def test_trials_in_other_processes_are_pruned_through_the_studys_file(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [
        *SEARCH,
        *PRUNED_SEARCH,
        "hydra.sweeper.pruner=median",
        # In memory, the study would be out of the workers' reach: the sweep keeps one of its
        # own in a journal file in its directory instead.
        "hydra.sweeper.storage=memory",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
    ]
    assert sweep(monkeypatch, store_uri, args) == 0
    (journal,) = workdir.glob(f"outputs/multirun/*/*/{studies.JOURNAL_FILE}")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    assert_pruned_alike(client, the_study(storage), capfd.readouterr().out)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_failed_trials_beyond_max_failure_rate_stop_the_search(
    monkeypatch, capfd, store_uri, client, workdir, rate
) -> None:
    args = [
        *SEARCH,
        "optim=sgd",
        "hydra.sweeper.sampler.name=grid",
        "optim.lr=choice(50,60,0.001)",  # two of three diverge
        f"hydra.sweeper.max_failure_rate={rate}",
        "hydra.sweeper.storage=memory",
    ]
    assert sweep(monkeypatch, store_uri, args) == 1  # a failed trial fails the sweep's exit
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged: loss=" in errors[0], err
    ran = sorted(float(run.data.params["optim.lr"]) for run in trial_runs(client).values())
    if rate == 0.0:  # stopped at the first failure: never more than one converging trial
        assert errors[0].startswith("error: diverged: loss=")
        assert ran in ([50.0], [60.0], [0.001, 50.0], [0.001, 60.0]), ran
    else:  # every trial tried, and the failures counted
        assert errors[0].startswith("error: 2 of 3 jobs failed: diverged: loss=")
        assert ran == [0.001, 50.0, 60.0]


def test_studies_are_found_in_their_default_places(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(studies.STORAGE_VARIABLE, raising=False)
    db = tmp_path / "mlflow.db"
    assert studies.storage_url(None, f"sqlite:///{db}") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert studies.storage_url("memory", f"sqlite:///{db}") is None
    assert studies.storage_url("postgresql://h/o", "http://server:5000") == "postgresql://h/o"
    assert studies.storage_url(None, "http://server:5000").startswith("journal:/")
    # Trials on a cluster's nodes reach the file over NFS: Optuna's journal file, not SQLite.
    on_nodes = studies.storage_url(None, f"sqlite:///{db}", on_nodes=True)
    assert on_nodes == f"journal:{tmp_path / 'optuna.journal'}"
    # A team's database, set on every machine; a search's own setting still wins.
    monkeypatch.setenv(studies.STORAGE_VARIABLE, "postgresql://team/optuna")
    assert studies.storage_url(None, "http://server:5000") == "postgresql://team/optuna"
    assert studies.storage_url(None, f"sqlite:///{db}", on_nodes=True) == "postgresql://team/optuna"
    assert studies.storage_url("memory", "http://server:5000") is None
    assert studies.storage_key(None) == studies.STORAGE_VARIABLE
    assert studies.storage_key("memory") == "hydra.sweeper.storage"


def test_a_bad_study_storage_in_the_environment_is_named_in_one_line(
    monkeypatch, capfd, store_uri, client
) -> None:
    monkeypatch.setenv(studies.STORAGE_VARIABLE, "sqlite:////no/such/dir/optuna.db")
    assert sweep(monkeypatch, store_uri, SEARCH) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: {studies.STORAGE_VARIABLE}=sqlite:////no/such/dir/optuna.db: no directory "
        "/no/such/dir"
    ], err
    (parent,) = runs_of(client, "minimize")
    assert parent.info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_search_killed_mid_trial_is_completed_by_its_rerun(workdir, signum) -> None:
    named = ["-m", "experiment=lr_search", "hydra.sweeper.study_name=s", "hydra.sweeper.n_trials=3"]
    # Every trial runs all its 2000 steps (no tol), a second or more: the first completes,
    # and the search is stopped a few steps into the second, well before its end.
    search = start_cli([*named, "task.steps=2000", "task.tol=null"], workdir)
    wait_for_points(workdir / "outputs", 1, "multirun/*/*/1/journal.jsonl")
    search.send_signal(signum)
    search.communicate(timeout=60)
    assert search.returncode == (143 if signum == signal.SIGTERM else -9)

    rerun = run_cli([*named, "task.steps=10"], cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    # The completed trial counts towards n_trials, the killed one does not.
    assert "it held 1 trial before this search, n_trials=3" in rerun.stdout
    trials = the_study(f"sqlite:///{workdir / 'optuna.db'}", "s").get_trials()
    first, killed, *rest = trials
    assert first.state == TrialState.COMPLETE and first.user_attrs.get(studies.RETRY_OF) is None
    assert killed.state == TrialState.FAIL and killed.user_attrs[studies.ABANDONED]
    complete = [trial.number for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == 3 and [trial.state for trial in rest] == [TrialState.COMPLETE] * 2
    (retry,) = [trial for trial in rest if trial.user_attrs.get(studies.RETRY_OF) == 1]
    assert retry.params == killed.params
    # Each trial run once, in a run of its own (no number twice); the killed trial's run
    # ended as its signal ends a run, not left RUNNING.
    runs = trial_runs(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"))
    assert sorted(runs) == [trial.number for trial in trials] == [0, 1, 2, 3]
    assert runs[1].info.status == ("KILLED" if signum == signal.SIGTERM else "FAILED")


@pytest.mark.slow
def test_two_searches_on_one_study_share_its_trials(workdir) -> None:
    args = ["-m", *SEARCH, "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=6"]
    first, second = start_cli(args, workdir), start_cli(args, workdir)
    for process in (first, second):
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
    trials = the_study(f"sqlite:///{workdir / 'optuna.db'}", "shared").get_trials()
    complete = [trial.number for trial in trials if trial.state == TrialState.COMPLETE]
    others = [trial for trial in trials if trial.state != TrialState.COMPLETE]
    assert len(complete) == 6  # n_trials in all, not for each search
    assert all(trial.user_attrs.get(studies.SURPLUS) for trial in others)  # asked, never run
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = trial_runs(client)
    assert sorted(runs) == sorted(complete)  # every trial run once, by one search
    parents = {r.info.run_id for r in runs_of(client, "minimize") if r.data.tags.get("sweep")}
    assert len(parents) == 2
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} <= parents


@pytest.mark.slow
def test_a_searchs_rerun_searches_anew_and_reproduces_it(monkeypatch, store_uri, client, workdir):
    assert sweep(monkeypatch, store_uri, [*SEARCH, "hydra.sweeper.n_trials=2"]) == 0
    (parent,) = [r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true"]
    assert parent.data.tags["search.study"] == "experiment=lr_search task.steps=10"
    assert parent.data.tags["search.held_before"] == "0"
    # The study's best trial, and Optuna's own figures beside the sweep's report.
    study = the_study(f"sqlite:///{workdir / 'optuna.db'}")
    assert parent.data.tags["search.best_trial"] == str(study.best_trial.number)
    assert float(parent.data.tags["search.best_value"]) == study.best_value
    assert json.loads(parent.data.tags["search.best_params"]) == study.best_params
    shown = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/optimization_history.png", "report/slice.png"} <= shown
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    again = run_cli([parent.info.run_id], workdir, module="experiments.rerun")
    # Its stored study is full: the rerun searches in a study of its own, seeded alike.
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "hydra.sweeper.storage=memory" in again.stdout
    assert "2 jobs: 2 finished" in again.stdout
    assert len(the_study(f"sqlite:///{workdir / 'optuna.db'}").get_trials()) == 2  # untouched


@pytest.mark.parametrize(
    ("launcher", "pruner", "storage", "warned"),
    [
        ("experiment=slurm", "median", "sqlite:////shared/optuna.db", True),
        ("experiment=slurm", "none", "sqlite:////shared/optuna.db", False),  # jobs never open it
        ("experiment=slurm", "median", "journal:/shared/study.journal", False),
        ("hydra/launcher=joblib", "median", "sqlite:////shared/optuna.db", False),  # one host
    ],
)
def test_a_pruned_search_on_slurm_is_warned_off_a_sqlite_study(
    caplog, launcher, pruner, storage, warned
) -> None:
    from omegaconf import OmegaConf

    from experiments.sweeps.search import loop
    from tests.conftest import hydra_node

    node = hydra_node([launcher, "hydra/sweeper=optuna", f"hydra.sweeper.pruner={pruner}"])
    with caplog.at_level("WARNING", logger=loop.__name__):
        loop._warn_sqlite_on_a_cluster(OmegaConf.create({"hydra": node}), storage, pruner)
    lines = [record.getMessage() for record in caplog.records]
    if warned:
        (line,) = lines
        assert "/shared/optuna.db is a SQLite file" in line
        assert "hydra.sweeper.storage=journal:PATH" in line
    else:
        assert lines == []


def left_by_a_search_that_is_gone(study: optuna.Study, sweep_dir: Path, job: int):
    """A trial asked by a search that has died since, its job ``job`` in ``sweep_dir``."""
    space = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    trial = study.ask(space)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trial.set_user_attr(studies.OWNER, f"{liveness.host()} {liveness.place()} {gone.pid} None")
    trial.set_user_attr(studies.JOB, [str(sweep_dir), job])
    return trial


@pytest.mark.parametrize(
    ("outcome", "state", "value", "again"),
    [
        (Outcome(0, [], "FINISHED", run_id="r0", objective=1.5), TrialState.COMPLETE, 1.5, 0),
        (Outcome(0, [], "UNSYNCED", run_id="r0", objective=2.5), TrialState.COMPLETE, 2.5, 0),
        (Outcome(0, [], "PRUNED", run_id="r0"), TrialState.PRUNED, None, 0),
        (Outcome(0, [], "FAILED", run_id="r0", reason="diverged"), TrialState.FAIL, None, 0),
        (Outcome(0, [], "KILLED", run_id="r0"), TrialState.FAIL, None, 1),
        (Outcome(0, [], "FINISHED", run_id="r0", objective=None), TrialState.FAIL, None, 1),
        (None, TrialState.FAIL, None, 1),  # its job never wrote an outcome
    ],
    ids=["finished", "unsynced", "pruned", "failed", "killed", "no-objective", "none"],
)
def test_a_trial_left_by_a_search_that_is_gone_is_told_its_jobs_outcome(
    tmp_path, outcome, state, value, again
) -> None:
    # The search was killed after the trial's job had ended, before it told the study: the
    # next search reads the job's outcome, and tells the trial what its search would have.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = left_by_a_search_that_is_gone(study, tmp_path / "sweep", 0)
    if outcome is not None:
        (tmp_path / "sweep" / "0").mkdir(parents=True)
        outcome.write(tmp_path / "sweep" / "0")
    held, running = studies.counted(study, grace_s=300)
    told = study.get_trials()[trial.number]
    assert told.state == state and told.value == value
    assert bool(told.user_attrs.get(studies.ABANDONED)) == bool(again)
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(queued) == again  # tried again by this search
    assert [t.user_attrs[studies.RETRY_OF] for t in queued] == [trial.number] * again
    assert (held, running) == (1 - again, 0)


class SigtermAtJobEnd(Callback):
    """Sends the search a real SIGTERM as its first job ends: the job's run has FINISHED,
    its trial not told yet (Hydra calls this inside the launcher, before it returns)."""

    def __init__(self) -> None:
        self.sent = False

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here


def test_a_search_stopped_at_a_trials_end_and_run_again_agrees_with_mlflow(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    args = [*SEARCH, "hydra.sweeper.study_name=ends", "hydra.sweeper.n_trials=2"]
    stop = f"+hydra.callbacks.stop._target_={__name__}.SigtermAtJobEnd"
    assert sweep(monkeypatch, store_uri, [*args, stop]) == 143
    assert "error: terminated (SIGTERM)" in capfd.readouterr().err
    study = the_study(f"sqlite:///{workdir / 'optuna.db'}", "ends")
    (first,) = study.get_trials()
    (run,) = trial_runs(client).values()
    assert run.info.status == "FINISHED"  # it ran to its end before the signal came
    assert first.state == TrialState.COMPLETE  # and its trial says so, not "tried again"
    assert first.value == run.data.metrics["objective/loss"]

    assert sweep(monkeypatch, store_uri, args) == 0
    assert "it held 1 trial before this search, n_trials=2" in capfd.readouterr().out
    trials = the_study(f"sqlite:///{workdir / 'optuna.db'}", "ends").get_trials()
    runs = trial_runs(client)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(runs) == [0, 1] and {r.info.status for r in runs.values()} == {"FINISHED"}
    for trial in trials:
        assert runs[trial.number].data.metrics["objective/loss"] == trial.value


ASK_THEN_SIGNAL = """
import os, signal, sys, time
import optuna
from experiments.command import app, exits

ask = optuna.Study.ask
asked = []

def ask_then_signal(self, *args, **kwargs):
    trial = ask(self, *args, **kwargs)
    asked.append(trial.number)
    if len(asked) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here
    return trial

optuna.Study.ask = ask_then_signal
sys.argv = ["experiments", "-m", *sys.argv[1:]]
sys.exit(exits.invoke(app.hydra_main))
"""


@pytest.mark.slow
def test_a_trial_asked_as_a_signal_comes_is_owned_and_run_again_by_the_next_search(
    monkeypatch, capfd, store_uri, client, workdir
) -> None:
    # A real SIGTERM the moment Optuna has made the second trial, before the search says it
    # owns it: left without an owner it would look like one still running elsewhere, and the
    # next search would stop short of n_trials, waiting on it.
    args = [*SEARCH, "hydra.sweeper.study_name=asked", "hydra.sweeper.n_trials=3"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    first = subprocess.run(
        [sys.executable, "-c", ASK_THEN_SIGNAL, *args],
        cwd=workdir,
        env={**env, "MLFLOW_TRACKING_URI": store_uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 143, first.stderr
    study = the_study(f"sqlite:///{workdir / 'optuna.db'}", "asked")
    second = study.get_trials()[1]
    assert second.state == TrialState.RUNNING and second.user_attrs.get(studies.OWNER)
    assert sweep(monkeypatch, store_uri, args) == 0
    trials = the_study(f"sqlite:///{workdir / 'optuna.db'}", "asked").get_trials()
    complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert sorted(trial_runs(client)) == complete
