"""Results that can be trusted: where a run ran, and running it again from its record.

``environment.json`` and its tags on every run; ``python -m experiments.rerun`` in real
processes on real SQLite stores (a rerun from a real ``mlflow server`` is in
``test_server.py``); the verdict's rules; ``python -m experiments.report --compare``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from experiments import names, process, runner
from experiments.errors import ConfigError
from experiments.names import NOTE_TAG, REPRODUCED_TAG, RERUN_OF_TAG, objective, result
from experiments.reproduce import command as rerun_command
from experiments.reproduce import compare
from experiments.runner import environment
from experiments.sweeps.report import command as report_command
from tests.conftest import compose_config, run_cli, runs_of

REPO = Path(__file__).resolve().parents[1]
PARENT = "mlflow.parentRunId"


def rerun(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m experiments.rerun ARGS`` in a subprocess, as a user types it."""
    return run_cli(list(args), cwd, env, module="experiments.rerun")


def rerun_here(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture, where: Path, *args: str
) -> tuple[int, str]:
    """The rerun command called in this process from ``where`` (its default store): its exit
    status and what it printed. The rerun itself is still a real ``python -m experiments``.
    For tests about the verdict, not the command's own process start."""
    monkeypatch.chdir(where)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    status = rerun_command.main(list(args))
    return status, capfd.readouterr().out


def artifact(client: MlflowClient, run_id: str, name: str, scratch: Path) -> str:
    return Path(client.download_artifacts(run_id, name, str(scratch))).read_text()


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def make_checkout(root: Path) -> Path:
    """A git repository with one committed file, as a checkout of the project would be."""
    root.mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "tests@example.org")
    git(root, "config", "user.name", "tests")
    (root / "train.py").write_text("lr = 0.1\n")
    git(root, "add", "train.py")
    git(root, "commit", "-q", "-m", "first")
    return root


# --- where a run ran ---


def test_a_clean_checkout_records_its_commit_and_no_diff(tmp_path) -> None:
    root = make_checkout(tmp_path / "clean")
    state = environment.code_state(root)
    assert state["commit"] == git(root, "rev-parse", "HEAD").strip()
    assert state["branch"] in ("master", "main")
    assert state["dirty"] is False and state["diff"] == ""


def test_a_dirty_checkout_records_its_diff_and_untracked_files(tmp_path) -> None:
    root = make_checkout(tmp_path / "dirty")
    (root / "train.py").write_text("lr = 0.2\n")
    (root / "new_module.py").write_text("x = 1\n")
    state = environment.code_state(root)
    assert state["dirty"] is True
    assert "-lr = 0.1" in state["diff"] and "+lr = 0.2" in state["diff"]
    assert "# untracked: new_module.py" in state["diff"]
    assert state["diff_bytes"] == len(state["diff"].encode()) and not state["diff_truncated"]
    assert len(state["diff_sha256"]) == 64


def test_a_large_diff_is_cut_at_its_bound_and_says_so(tmp_path, monkeypatch) -> None:
    root = make_checkout(tmp_path / "large")
    (root / "train.py").write_text("".join(f"line {i}\n" for i in range(5000)))
    monkeypatch.setattr(environment, "MAX_DIFF_BYTES", 1000)
    state = environment.code_state(root)
    assert state["diff_truncated"] is True and state["diff_bytes"] > 1000
    kept, _, note = state["diff"].rpartition("\n# code.diff truncated: ")
    assert len(kept.encode()) <= 1000
    assert note.startswith(f"{state['diff_bytes']:,} bytes, the first 1,000 kept")


def test_outside_a_checkout_no_code_is_claimed(tmp_path) -> None:
    assert environment.code_state(tmp_path) == {"commit": None}
    assert environment.code_state(None) == {"commit": None}


def test_the_environment_says_what_decides_a_timing(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        found = environment.collect(torch.device("cpu"))
    finally:
        torch.set_float32_matmul_precision(before)
    assert found["torch"]["version"] == torch.__version__
    assert found["torch"]["threads"] == torch.get_num_threads()
    assert found["torch"]["blas"]  # what torch.__config__ names (mkl, openblas, ...)
    assert found["packages"]["mlflow"] and found["packages"]["hydra-core"]
    assert found["cpu"]["usable_cores"] == len(os.sched_getaffinity(0))
    assert found["gpu"] is None
    assert found["settings"]["variables"] == {"OMP_NUM_THREADS": "2"} | {
        k: v
        for k, v in os.environ.items()
        if k != "OMP_NUM_THREADS" and k.startswith(environment.SETTINGS_PREFIXES)
    }
    assert found["settings"]["float32_matmul_precision"] == "high"
    # The BLAS and OpenMP libraries loaded here (numpy's OpenBLAS, torch's OpenMP), each
    # named by its file, with its version and its threads.
    pools = found["threadpools"]
    assert pools, "threadpoolctl found no BLAS or OpenMP library loaded"
    for pool in pools:
        assert set(pool) == {
            "user_api",
            "internal_api",
            "prefix",
            "version",
            "threading_layer",
            "num_threads",
            "library",
        }, pool
        assert pool["user_api"] in ("blas", "openmp"), pool
        assert pool["library"] and "/" not in pool["library"], pool  # a file name, not a path
        assert isinstance(pool["num_threads"], int) and pool["num_threads"] >= 1, pool
    assert any(pool["version"] for pool in pools), pools  # (libgomp's is not known)
    json.dumps(found)  # every value is JSON
    tags = environment.tags(found)
    assert tags["blas"] == found["torch"]["blas"]
    assert tags["threads"] == str(torch.get_num_threads())
    assert tags["cpu.isa"] == (",".join(found["cpu"]["isa"]) or "unknown")


def test_precision_and_determinism_are_settings_each_run_applies(store_uri, client, tmp_path):
    asked = ["task.steps=2", "float32_matmul_precision=high", "deterministic=true"]
    try:
        runner.run(compose_config([f"tracking.uri={store_uri}", *asked]), asked, tmp_path / "a")
        # The next run in this process (a sweep's next job) sets its own, not the last one's.
        runner.run(compose_config([f"tracking.uri={store_uri}"]), [], tmp_path / "b")
        # cuBLAS's deterministic workspace, set for the first run (never the user's own).
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.use_deterministic_algorithms(False)
        process.restore_env()  # as the command's end does
    first, second = runs_of(client, "minimize")
    assert first.data.params["float32_matmul_precision"] == "high"
    assert first.data.params["deterministic"] == "True"
    assert first.data.tags["config.hash"] != second.data.tags["config.hash"]  # identity
    settings = [
        json.loads(artifact(client, run.info.run_id, "environment.json", tmp_path / name))[
            "settings"
        ]
        for run, name in ((first, "a"), (second, "b"))
    ]
    assert (settings[0]["float32_matmul_precision"], settings[0]["deterministic_algorithms"]) == (
        "high",
        True,
    )
    assert (settings[1]["float32_matmul_precision"], settings[1]["deterministic_algorithms"]) == (
        "highest",
        False,
    )


DETERMINISM_IN_A_FRESH_PROCESS = """
import json, sys, torch
from experiments.runner import execution

def state():
    compiler = sys.modules.get("torch._inductor.config")
    return [
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        None if compiler is None else compiler.deterministic,
    ]

execution.set_deterministic(False)  # as torch starts: nothing to change
seen = [state()]
execution.set_deterministic(True, warn_only=True)
seen.append(state())
execution.set_deterministic(False)
seen.append(state())
print(json.dumps(seen))
"""


def test_determinism_is_set_only_where_it_changes_and_then_in_the_compiler_too() -> None:
    # torch.use_deterministic_algorithms imports torch's compiler (some 2 s of CPU) to set
    # its flag as well: a run that asks for what torch already has does not pay for that.
    done = subprocess.run(
        [sys.executable, "-c", DETERMINISM_IN_A_FRESH_PROCESS], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [
        [False, False, None],  # the compiler was never imported
        [True, True, True],
        [False, False, False],  # once it is, both flags change together
    ]


def test_an_unknown_precision_is_refused_naming_the_key(store_uri, tmp_path) -> None:
    cfg = compose_config([f"tracking.uri={store_uri}", "float32_matmul_precision=low"])
    with pytest.raises(ConfigError) as refused:
        runner.run(cfg, [], tmp_path)
    assert str(refused.value) == (
        "float32_matmul_precision must be one of highest, high, medium, got 'low'"
    )


# --- the verdict's rules, on runs in a real store ---


def logged_run(client: MlflowClient, experiment: str, metrics: dict, params: dict, tags: dict):
    """A FINISHED run with these records, logged through MLflow's client."""
    experiment_id = client.get_experiment_by_name(experiment)
    experiment_id = (
        experiment_id.experiment_id if experiment_id else client.create_experiment(experiment)
    )
    run = client.create_run(experiment_id, tags=tags)
    for key, values in metrics.items():
        for step, value in enumerate(values if isinstance(values, list) else [values]):
            client.log_metric(run.info.run_id, key, value, step=step)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


@pytest.mark.parametrize(
    ("time_b", "iqr", "expected", "reproduced"),
    [
        (10.2, 0.5, "same within noise", True),
        (12.3, 0.5, "slower by 23% beyond the noise", False),
        (8.5, 0.5, "faster by 15% beyond the noise", False),
        (12.3, 3.0, "same within noise", True),  # a spread this wide hides the change
    ],
)
def test_timings_are_judged_against_their_spread(client, time_b, iqr, expected, reproduced) -> None:
    tags = {"task": "matmul"}
    a = logged_run(client, "t", {objective("time_ms"): 10.0, result("time_iqr_ms"): iqr}, {}, tags)
    b = logged_run(
        client, "t", {objective("time_ms"): time_b, result("time_iqr_ms"): 0.1}, {}, tags
    )
    verdict = compare.compare(compare.side(client, a), compare.side(client, b))
    assert verdict.results[0].startswith(expected), verdict.results
    assert verdict.reproduced is reproduced


@pytest.mark.parametrize(
    ("times", "expected", "reproduced"),
    [
        # Two of three reruns alone are "beyond the noise", yet the original lies within
        # the spread between the reruns' processes: reproduced.
        (
            (11.5, 10.05, 11.6),
            "same within the reruns' spread: 10 ms against 3 reruns' "
            "10.05-11.6 ms, widest spread (IQR) 0.1 ms",
            True,
        ),
        ((20.0, 20.5, 19.8), "slower by 100% beyond the reruns' spread", False),
        ((5.0, 5.2, 4.9), "faster by 50% beyond the reruns' spread", False),
    ],
)
def test_repeated_timings_are_judged_against_the_spread_between_processes(
    client, times, expected, reproduced
) -> None:
    tags = {"task": "matmul"}

    def timed(value: float):
        metrics = {objective("time_ms"): value, result("time_iqr_ms"): 0.1}
        return compare.side(client, logged_run(client, "r", metrics, {}, tags))

    first, reruns = timed(10.0), [timed(value) for value in times]
    verdicts = [compare.compare(first, rerun) for rerun in reruns]
    verdict = compare.across(first, reruns, verdicts)
    assert verdict.results[0].startswith(expected), verdict.results
    assert verdict.reproduced is reproduced
    assert verdict.status == (0 if reproduced else rerun_command.NOT_REPRODUCED_STATUS)
    for number, (rerun, alone) in enumerate(zip(reruns, verdicts), 1):  # each rerun's own
        assert f"rerun {number} {rerun.run_id}: {alone.summary}" in verdict.results


def test_repeated_results_must_each_be_reproduced(client) -> None:
    tags, params = {"task": "minimize"}, {"device": "cpu"}
    first = logged_run(client, "h", {objective("loss"): [3.0, 2.0]}, params, tags)
    same = logged_run(client, "h", {objective("loss"): [3.0, 2.0]}, params, tags)
    other = logged_run(client, "h", {objective("loss"): [3.0, 2.5]}, params, tags)
    sides = [compare.side(client, run) for run in (first, same, other)]
    verdicts = [compare.compare(sides[0], rerun) for rerun in sides[1:]]
    verdict = compare.across(sides[0], sides[1:], verdicts)
    assert not verdict.reproduced
    assert verdict.summary == "not reproduced: 1 of 2 reruns did"
    both = compare.across(sides[0], [sides[1], sides[1]], [verdicts[0], verdicts[0]])
    assert both.reproduced and both.summary == "reproduced"


def test_a_time_recorded_before_objective_names_is_compared_with_its_reruns(client) -> None:
    tags = {"task": "matmul"}
    old = logged_run(client, "t", {result("time_ms"): 10.0, result("time_iqr_ms"): 0.5}, {}, tags)
    new = logged_run(
        client, "t", {objective("time_ms"): 10.2, result("time_iqr_ms"): 0.1}, {}, tags
    )
    verdict = compare.compare(compare.side(client, old), compare.side(client, new))
    assert verdict.reproduced, verdict.results
    assert verdict.results[0].startswith("same within noise: 10 ms -> 10.2 ms (+2.0%)")


def test_histories_are_compared_bit_for_bit_naming_the_first_step(client) -> None:
    tags = {"task": "minimize"}
    params = {"device": "cpu", "task.steps": "4"}
    losses = [4.0, 3.0, 2.0, 1.0]
    a = logged_run(client, "h", {objective("loss"): losses, "time/task_s": 1.0}, params, tags)
    same = logged_run(client, "h", {objective("loss"): losses, "time/task_s": 2.0}, params, tags)
    off = logged_run(client, "h", {objective("loss"): [4.0, 3.0, 2.0 + 1e-15, 1.0]}, params, tags)
    equal = compare.compare(compare.side(client, a), compare.side(client, same))
    assert equal.reproduced and equal.results == ["bit-for-bit equal: 1 metric, 4 points"]
    assert equal.settings == ["equal"]
    differs = compare.compare(compare.side(client, a), compare.side(client, off))
    assert not differs.reproduced
    assert (
        differs.results[0]
        == f"{objective('loss')} differs first at step 2: 2.0 -> 2.000000000000001"
    )


def test_a_setting_that_differs_unasked_is_not_a_reproduction(client) -> None:
    tags = {"task": "minimize"}
    a = logged_run(client, "s", {objective("loss"): 1.0}, {"optim.lr": "0.1", "seed": "0"}, tags)
    b = logged_run(client, "s", {objective("loss"): 1.0}, {"optim.lr": "0.2", "seed": "0"}, tags)
    asked = compare.compare(compare.side(client, a), compare.side(client, b), ["optim.lr=0.2"])
    assert asked.reproduced and asked.settings == ["optim.lr: 0.1 -> 0.2 (override)"]
    unasked = compare.compare(compare.side(client, a), compare.side(client, b))
    assert not unasked.reproduced
    assert unasked.summary == "not reproduced: settings differ (optim.lr)"


def test_environment_differences_are_listed_one_by_one() -> None:
    a = {"torch": {"version": "2.13.0", "blas": "mkl"}, "code": {"diff_sha256": "1"}, "cwd": "/a"}
    b = {
        "torch": {"version": "2.14.0", "blas": "openblas"},
        "code": {"diff_sha256": "2"},
        "cwd": "/b",
    }
    assert compare.environment_rows(a, b) == [
        "code: the diff changed",
        "torch.blas: mkl -> openblas",
        "torch.version: 2.13.0 -> 2.14.0",
    ]
    assert compare.environment_rows(a, a) == ["equal"]
    assert compare.environment_rows(None, a) == ["not recorded for the first run"]


# --- python -m experiments.rerun, in real processes ---


@pytest.fixture(scope="module")
def original(tmp_path_factory, empty_store) -> tuple[Path, str]:
    """A 20-step minimize run recorded by the command, in a store of its own."""
    where = tmp_path_factory.mktemp("original")
    shutil.copyfile(empty_store, where / "mlflow.db")
    done = run_cli(["task.steps=20"], cwd=where)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    return where, runs_of(client, "minimize")[0].info.run_id


@pytest.mark.slow
def test_a_minimize_rerun_is_bit_identical_and_says_so(original, tmp_path) -> None:
    where, run_id = original
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    first = client.get_run(run_id)
    # Its description gives the command that reproduces it.
    command = f"python -m experiments.rerun {run_id} --from sqlite:///{where / 'mlflow.db'}"
    assert command in first.data.tags[NOTE_TAG]
    assert first.data.tags["blas"] and first.data.tags["threads"]
    env = json.loads(artifact(client, run_id, "environment.json", tmp_path))
    assert env["torch"]["version"] == torch.__version__

    done = rerun(where, run_id)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "verdict: reproduced" in done.stdout
    assert "settings     equal" in done.stdout
    assert "results      bit-for-bit equal" in done.stdout
    again = [r for r in runs_of(client, "minimize") if r.data.tags.get(RERUN_OF_TAG) == run_id]
    assert len(again) == 1
    new = again[0]
    assert new.data.tags[REPRODUCED_TAG] == "true"
    assert new.info.run_name == first.info.run_name  # the rerun's tag is not a setting
    assert new.data.tags["config.hash"] == first.data.tags["config.hash"]
    text = artifact(client, new.info.run_id, "rerun.txt", tmp_path)
    assert text.splitlines()[1] == "verdict: reproduced"


@pytest.mark.slow
def test_a_rerun_with_more_steps_differs_only_there(original, monkeypatch, capfd) -> None:
    where, run_id = original
    status, out = rerun_here(monkeypatch, capfd, where, run_id, "task.steps=30")
    assert status == rerun_command.NOT_REPRODUCED_STATUS, out
    lines = out.splitlines()
    assert "settings     task.steps: 20 -> 30 (override)" in lines
    assert not any(line.startswith(" " * 13 + "task.") for line in lines)  # nothing else
    verdict = next(line for line in lines if line.startswith("verdict: "))
    assert "differs first at step 21" in verdict
    assert "equal on the steps both have" in verdict


@pytest.mark.slow
def test_a_repeated_rerun_judges_over_all_its_reruns(original, monkeypatch, capfd) -> None:
    where, run_id = original
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    before = {run.info.run_id for run in runs_of(client, "minimize")}
    status, out = rerun_here(monkeypatch, capfd, where, run_id, "--repeat", "2")
    assert status == 0, out
    lines = out.splitlines()
    assert any(line.startswith(f"2 reruns of {run_id} (") for line in lines), lines
    assert "verdict: reproduced" in lines
    new = [run for run in runs_of(client, "minimize") if run.info.run_id not in before]
    assert len(new) == 2  # oldest first: rerun 1, then rerun 2
    for number, run in enumerate(new, 1):
        assert run.data.tags[RERUN_OF_TAG] == run_id
        assert run.data.tags[REPRODUCED_TAG] == "true"  # each its own verdict, logged
        assert any(line.endswith(f"rerun {number} {run.info.run_id}: reproduced") for line in lines)
    with pytest.raises(SystemExit) as refused:
        rerun_command.main([run_id, "--repeat", "0"])
    assert refused.value.code == 2
    assert "argument --repeat: must be a whole number of at least 1, got '0'" in (
        capfd.readouterr().err
    )


def recorded_before(client: MlflowClient, run_id: str, era: str, scratch: Path) -> str:
    """A copy of a run as a version before objective/<name> recorded it; its id.

    ``era`` ``result``: the objective under ``result/<name>`` (``result/loss``); ``bare``:
    every result under its bare name (``loss``, ``grad_norm``), as before results had a
    prefix. Params, tags, every point of every history and the record a rerun reads
    (``overrides.yaml``, ``environment.json``) are the run's own.
    """
    run = client.get_run(run_id)

    def named(key: str) -> str:
        bare = names.bare_name(key)
        if bare is None:
            return key
        return bare if era == "bare" else names.result(bare)

    copy = client.create_run(run.info.experiment_id, tags=run.data.tags)
    metrics = [
        Metric(named(key), point.value, point.timestamp, point.step)
        for key in run.data.metrics
        for point in client.get_metric_history(run_id, key)
    ]
    params = [Param(key, value) for key, value in run.data.params.items()]
    client.log_batch(copy.info.run_id, metrics=metrics, params=params)
    for name in (names.OVERRIDES_FILE, names.ENVIRONMENT_FILE):
        client.log_artifact(copy.info.run_id, client.download_artifacts(run_id, name, str(scratch)))
    client.set_terminated(copy.info.run_id, "FINISHED")
    return copy.info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("era", ["result", "bare"])
def test_a_run_recorded_before_objective_names_is_reproduced_by_its_rerun(
    original, tmp_path, era, monkeypatch, capfd
) -> None:
    where, run_id = original
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    old = recorded_before(client, run_id, era, tmp_path)
    assert names.objective("loss") not in client.get_run(old).data.metrics
    status, out = rerun_here(monkeypatch, capfd, where, old)
    assert status == 0, out
    assert "verdict: reproduced" in out
    # the rerun records objective/loss; its verdict pairs it with the old run's name for it
    (new,) = [r for r in runs_of(client, "minimize") if r.data.tags.get(RERUN_OF_TAG) == old]
    assert names.objective("loss") in new.data.metrics
    compared = [key for key in new.data.metrics if not key.startswith("time/")]
    assert f"results      bit-for-bit equal: {len(compared)} metrics" in out


@pytest.mark.slow
def test_a_sweeps_rerun_is_a_new_sweep_with_the_same_jobs(workdir, store_uri, client) -> None:
    done = run_cli(["-m", "task.steps=3,4"], cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is a SQLite file" not in done.stderr  # said of Slurm sweeps only
    parent = next(r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true")
    # The parent records where the sweep was launched, as its jobs record where they ran.
    assert "environment.json" in {item.path for item in client.list_artifacts(parent.info.run_id)}
    job = next(
        r for r in runs_of(client, "minimize") if r.data.tags.get(PARENT) == parent.info.run_id
    )
    launched, ran = (
        json.loads(artifact(client, run.info.run_id, "environment.json", workdir / name))
        for run, name in ((parent, "parent"), (job, "job"))
    )
    assert launched["command"][-2:] == ["-m", "task.steps=3,4"]
    assert launched["gpu"] is None  # the parent uses no device
    for part in ("python", "packages", "torch", "code"):  # one process, one checkout
        assert launched[part] == ran[part], part
    assert parent.data.tags["blas"] == job.data.tags["blas"]
    again = rerun(workdir, parent.info.run_id)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    parents = [r for r in runs_of(client, "minimize") if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 2
    new = parents[1]
    assert new.data.tags[RERUN_OF_TAG] == parent.info.run_id
    assert new.data.tags[REPRODUCED_TAG] == "true"
    jobs = client.search_runs(
        [new.info.experiment_id], f"tags.`mlflow.parentRunId` = '{new.info.run_id}'"
    )
    assert sorted(r.data.params["task.steps"] for r in jobs) == ["3", "4"]
    assert "job 0 steps=3: reproduced" in again.stdout
    assert "job 1 steps=4: reproduced" in again.stdout

    # The two sweeps compared as they exist: the same verdict, job by job, and nothing written.
    compared = run_cli(
        ["--compare", parent.info.run_id, new.info.run_id], workdir, module="experiments.report"
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr[-2000:]
    lines = compared.stdout.splitlines()
    assert lines[0] == (
        f"{new.info.run_id} ({new.info.run_name}) against "
        f"{parent.info.run_id} ({parent.info.run_name})"
    )
    assert lines[1] == "verdict: reproduced"
    assert lines[-2:] == [  # one line per pair of jobs, by job number
        "jobs         job 0 steps=3: reproduced",
        "             job 1 steps=4: reproduced",
    ]
    verdict = again.stdout.splitlines()
    assert lines[1:] == verdict[verdict.index("verdict: reproduced") :]  # the rerun's own
    assert len(runs_of(client, "minimize")) == 6
    assert not (workdir / "outputs" / "reports").exists()


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores for two threads")
def test_a_matmul_rerun_on_one_thread_is_slower_beyond_the_noise(workdir, store_uri, client):
    # A timing: marked `alone`, it runs after the parallel tests, with the machine to itself
    # (make test), as a user's measurement would.
    done = run_cli(["task=matmul", "task.threads=2"], cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = runs_of(client, "matmul")[0].info.run_id
    again = rerun(workdir, run_id, "task.threads=1")
    assert again.returncode == rerun_command.NOT_REPRODUCED_STATUS, again.stdout + again.stderr
    lines = again.stdout.splitlines()
    assert "settings     task.threads: 2 -> 1 (override)" in lines
    assert any(line.endswith("threads: 2 -> 1") for line in lines), lines
    assert not [line for line in lines if "default_threads" in line]  # the same process default
    results = next(line for line in lines if line.startswith("results "))
    assert "slower by" in results and "beyond the noise" in results, results
    new = runs_of(client, "matmul")[1]
    assert new.data.tags[REPRODUCED_TAG] == "false"
    # environment.json names the threads the task used, as the tag does, and the default.
    defaults = set()
    for run, threads in ((run_id, 2), (new.info.run_id, 1)):
        env = json.loads(artifact(client, run, "environment.json", workdir / run))
        assert env["torch"]["threads"] == threads
        defaults.add(env["torch"]["default_threads"])
        assert client.get_run(run).data.tags["threads"] == str(threads)
    assert len(defaults) == 1 and min(defaults) >= 1, defaults


@pytest.mark.slow
def test_a_dirty_tree_leaves_code_diff(tmp_path, empty_store) -> None:
    # The package runs from a checkout of its own with a change not committed.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        REPO / "src", checkout / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    make_checkout(checkout / "other")  # an unrelated repository: not the package's
    git(checkout, "init", "-q")
    git(checkout, "config", "user.email", "tests@example.org")
    git(checkout, "config", "user.name", "tests")
    git(checkout, "add", "src")
    git(checkout, "commit", "-q", "-m", "the package")
    changed = checkout / "src" / "experiments" / "tasks" / "minimize" / "progress.py"
    changed.write_text(changed.read_text() + "\n# a change not committed\n")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(empty_store, work / "mlflow.db")
    done = run_cli(["task.steps=3"], cwd=work, env={"PYTHONPATH": str(checkout / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = runs_of(client, "minimize")[0]
    assert run.data.tags["code.dirty"] == "true"
    assert run.data.tags["mlflow.source.git.commit"] == git(checkout, "rev-parse", "HEAD").strip()
    diff = artifact(client, run.info.run_id, "code.diff", tmp_path)
    assert "+# a change not committed" in diff and "# untracked: other/" in diff
    env = json.loads(artifact(client, run.info.run_id, "environment.json", tmp_path))
    assert env["code"]["dirty"] is True and "diff" not in env["code"]  # the diff is its own file


# --- refusals: one line, exit 1, nothing recorded ---


def test_an_unknown_run_is_refused(workdir, store_uri, client, capsys) -> None:
    status = rerun_command.main(["0" * 32])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err == [
        f"error: RUN_ID '{'0' * 32}': no such run in the default tracking URI={store_uri}"
    ]
    assert runs_of(client, "minimize") == []


def test_a_run_with_no_record_to_rerun_from_says_what_to_do(workdir, store_uri, client, capsys):
    tags = {"task": "minimize", "overrides": "optim.lr=0.5"}
    old = logged_run(client, "minimize", {objective("loss"): 1.0}, {}, tags)
    status = rerun_command.main([old.info.run_id])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert "has no record to rerun from" in err[0]
    assert err[0].endswith("run its command again instead: python -m experiments optim.lr=0.5")
    assert len(runs_of(client, "minimize")) == 1


def test_a_config_that_no_longer_composes_names_the_key(workdir, store_uri, client, capsys):
    old = logged_run(client, "minimize", {objective("loss"): 1.0}, {}, {"task": "minimize"})
    client.log_text(old.info.run_id, "- task.momentum_decay=0.5\n", "overrides.yaml")
    status = rerun_command.main([old.info.run_id])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert "does not compose with this version" in err[0] and "momentum_decay" in err[0]
    assert len(runs_of(client, "minimize")) == 1


def test_report_compares_two_existing_runs_the_same_way(store_uri, client, capsys) -> None:
    tags = {"task": "minimize"}
    a = logged_run(client, "c", {objective("loss"): [3.0, 2.0]}, {"device": "cpu"}, tags)
    b = logged_run(client, "c", {objective("loss"): [3.0, 2.5]}, {"device": "cpu"}, tags)
    args = ["--compare", a.info.run_id, b.info.run_id, "--tracking-uri", store_uri]
    status = report_command.main(args)
    out = capsys.readouterr().out
    assert status == rerun_command.NOT_REPRODUCED_STATUS  # as a rerun's verdict exits
    assert (
        f"verdict: not reproduced: {objective('loss')} differs first at step 1: 2.0 -> 2.5" in out
    )


@pytest.mark.parametrize(
    ("recorded", "given", "named"),
    [
        ("- task.steps=3", "task.stepz=4", "'task.stepz'"),
        # Hydra's own settings, checked against the launcher's and sweeper's schemas.
        ("- task.steps=3", "hydra.launcher.foo=1", "'hydra.launcher.foo'"),
        ("- task.steps=3", "hydra.sweeper.n_trials=abc", "'hydra.sweeper.n_trials'"),
        ("- experiment=lr_search", "hydra.sweeper.n_trials=abc", "hydra.sweeper.n_trials=abc"),
    ],
    ids=["task-key", "launcher-key", "sweeper-key", "sweeper-value"],
)
def test_a_bad_override_on_a_rerun_is_refused_as_the_users(
    workdir, store_uri, client, capsys, recorded, given, named
) -> None:
    tags = {"task": "minimize"} | ({"sweep": "true"} if "experiment=" in recorded else {})
    old = logged_run(client, "minimize", {objective("loss"): 1.0}, {}, tags)
    client.log_text(old.info.run_id, recorded + "\n", "overrides.yaml")
    status = rerun_command.main([old.info.run_id, given])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: the overrides given do not apply: "), lines
    assert named in lines[0]
    assert out == ""  # refused before the rerun starts
    assert len(runs_of(client, "minimize")) == 1


def test_a_sweeps_record_keeps_how_it_launched_not_where_it_wrote() -> None:
    from experiments.sweeps.callback import launch_overrides

    given = [
        "hydra.mode=MULTIRUN",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweep.dir=/tmp/somewhere",
        "hydra.sweeper.params.optim.lr=interval(0.01,0.1)",
    ]
    assert launch_overrides(given) == [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.params.optim.lr=interval(0.01,0.1)",
    ]


def test_commands_run_in_process_leave_the_environment_as_they_found_it(
    workdir, store_uri, capsys, monkeypatch
):
    from experiments.command import app, exits
    from experiments.record import sync

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run = ["experiments", f"tracking.uri={store_uri}", "task.steps=2"]
    # A first run imports what a run imports: some libraries set variables when imported
    # (sklearn KMP_DUPLICATE_LIB_OK, torch's inductor its cache directory), once a process.
    monkeypatch.setattr(sys, "argv", run)
    assert exits.invoke(app.hydra_main) == 0
    before = dict(os.environ)
    caller = ("high", True)  # this process's own torch switches, which the run changes
    torch.set_float32_matmul_precision(caller[0])
    torch.use_deterministic_algorithms(caller[1], warn_only=True)
    switched = [*run, "deterministic=false", "float32_matmul_precision=medium"]
    try:
        monkeypatch.setattr(sys, "argv", [*run, "deterministic=true"])
        assert exits.invoke(app.hydra_main) == 0
        monkeypatch.setattr(sys, "argv", switched)
        assert exits.invoke(app.hydra_main) == 0
        found = torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.use_deterministic_algorithms(False)
    assert found == caller and warn_only  # as the caller had them, not as the runs set them
    assert dict(os.environ) == before  # the run's CUBLAS_WORKSPACE_CONFIG undone
    nowhere = "http://127.0.0.1:9"  # refused at once
    assert report_command.main(["--experiment", "x", "--tracking-uri", nowhere]) == 1
    assert rerun_command.main(["0" * 32, "--from", nowhere]) == 1
    assert sync.main(["--tracking-uri", nowhere, str(workdir)]) == 1
    assert dict(os.environ) == before  # MLflow's HTTP bounds and progress bar setting undone
    assert "cannot reach the MLflow server" in capsys.readouterr().err
