"""A team's set-up: `mlflow server` on PostgreSQL, artifacts served, logins (basic-auth).

One PostgreSQL cluster and one server serve the module; the cluster is the tests' own
(see ``tests.services``). Two users: ``admin``, and ``reader`` with MLflow's default
READ permission. Everything is read back through the server.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli, runs_of
from tests.services import MlflowServer, Postgres, missing_postgres
from tests.test_reproduce import rerun

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.slow]

ADMIN = ("admin", "Adm1n-pass-7c41")
READER = ("reader", "Re4der-pass-0e95")


class Team:
    def __init__(self, uri: str, postgres: Postgres, backend: str) -> None:
        self.uri = uri
        self.postgres = postgres
        self.backend = backend

    def env(self, user: tuple[str, str] | None = ADMIN) -> dict[str, str]:
        env = {"MLFLOW_TRACKING_URI": self.uri}
        # No login: empty, as MLflow reads them (the test process may hold the admin's).
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = user or ("", "")
        return env


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory):
    reason = missing_postgres()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("team")
    postgres = Postgres()
    postgres.start()
    try:
        backend = postgres.create_database("mlflow")
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {postgres.create_database('mlflow_auth')}\n"
            f"admin_username = {ADMIN[0]}\n"
            # MLflow's own cache of a login it checked (off by default): each request
            # otherwise pays a password hash check (docs/team.md)
            "auth_cache_ttl_seconds = 60\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        server = MlflowServer(
            root / "server",
            backend=backend,
            app_name="basic-auth",
            workers=2,  # several, as a team's server (MLflow's default is 4)
            env={
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-secret-key-" + "x" * 16,
            },
        )
        server.start()
        try:
            _create_user(server.uri, *READER)
            yield Team(server.uri, postgres, backend)
        finally:
            server.stop()
    finally:
        postgres.stop()


def _create_user(uri: str, username: str, password: str) -> None:
    login = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/users/create",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {login}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@pytest.fixture
def admin(team: Team, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of the server, logged in as the admin."""
    for name, value in team.env().items():
        monkeypatch.setenv(name, value)
    return MlflowClient(team.uri)


def _login_in_the_uri(team: Team) -> str:
    """The server's URI with the admin's login in it (``http://admin:PASSWORD@host:port``)."""
    return team.uri.replace("://", f"://{ADMIN[0]}:{ADMIN[1]}@", 1)


SWEEP = [
    "-m",
    "optim.lr=0.01,0.02,0.03,0.04",
    "task.steps=5",
    "tracking.experiment=team-sweep",
    "skip_existing=true",  # run again, it resumes
]


@pytest.fixture(scope="module")
def single(team: Team, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """A run recorded into the server (experiment ``team-single``), once for the module: the
    tests that read it back share it (each command costs seconds to start)."""
    return run_cli(
        ["task.steps=5", "tracking.experiment=team-single"],
        tmp_path_factory.mktemp("single"),
        team.env(),
    )


@pytest.fixture(scope="module")
def sweep(team: Team, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """A sweep recorded into the server (experiment ``team-sweep``), once for the module."""
    return run_cli(SWEEP, tmp_path_factory.mktemp("sweep"), team.env())


def _count_runs_in_postgres(team: Team, experiment_id: str) -> int:
    import psycopg2

    with (
        psycopg2.connect(
            host="127.0.0.1", port=team.postgres.port, user=Postgres.USER, dbname="mlflow"
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("select count(*) from runs where experiment_id = %s", (experiment_id,))
        return cursor.fetchone()[0]


def test_a_run_a_sweep_a_resumed_sweep_and_the_report(team, admin, single, sweep, workdir) -> None:
    # (Parallel jobs recording into a server are tests/test_server.py's; here, PostgreSQL.)
    assert single.returncode == 0, single.stderr[-2000:]
    (run,) = runs_of(admin, "team-single")
    assert run.info.status == "FINISHED"
    history = admin.get_metric_history(run.info.run_id, "objective/loss")
    assert [point.step for point in history] == list(range(6))
    png = admin.download_artifacts(run.info.run_id, "loss.png", str(workdir))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # downloaded through the server

    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "4 jobs: 4 finished" in sweep.stdout
    runs = runs_of(admin, "team-sweep")
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    experiment_id = parent.info.experiment_id
    assert _count_runs_in_postgres(team, experiment_id) == 5  # the server's store is PostgreSQL

    again = run_cli(SWEEP, workdir, team.env())  # resumed: every job is already done
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 jobs: 4 skipped" in again.stdout
    children = [r for r in runs_of(admin, "team-sweep") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4  # none ran twice

    report = subprocess.run(
        [sys.executable, "-m", "experiments.report", "--parent", parent.info.run_id]
        + ["--out", str(workdir / "report")],
        cwd=workdir,
        env={**os.environ, **team.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert list((workdir / "report").glob("*.png"))
    logged = {a.path for a in admin.list_artifacts(parent.info.run_id, "report")}
    assert logged, "the report is logged into the parent run"


def test_a_store_on_postgresql_directly_records_every_point(team, workdir) -> None:
    uri = team.postgres.create_database("direct")
    result = run_cli(["task.steps=300", f"tracking.uri={uri}"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(uri)
    (run,) = runs_of(client, "minimize")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "objective/loss")) == 301
    assert (
        run.data.metrics["objective/loss"]
        == client.get_metric_history(run.info.run_id, "objective/loss")[-1].value
    )


@pytest.mark.parametrize(
    ("user", "refused"),
    [
        (("admin", "not-the-password"), "401"),
        (None, "401"),
        (READER, "403"),
    ],
    ids=["wrong-password", "no-login", "read-only-user"],
)
def test_a_login_that_cannot_record_is_refused_in_one_line(
    team, admin, workdir, user, refused
) -> None:
    if admin.get_experiment_by_name("team-logins") is None:
        admin.create_experiment("team-logins")  # the team's experiment: the reader may read it
    started = time.monotonic()
    result = run_cli(["task.steps=5", "tracking.experiment=team-logins"], workdir, team.env(user))
    took = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1, result.stderr
    assert "Traceback" not in result.stderr
    error = lines[-1]
    assert error.startswith(f"error: MLFLOW_TRACKING_URI={team.uri}: ")
    assert refused in error
    if refused == "403":
        assert "runs/create" in error and "permission denied" in error
    else:
        assert "MLFLOW_TRACKING_USERNAME" in error
    assert took < 30  # no minutes of retries
    experiment = admin.get_experiment_by_name("team-logins")
    assert admin.search_runs([experiment.experiment_id]) == []  # no run, so none RUNNING


def test_a_password_never_reaches_the_store_the_logs_or_the_summary(team, admin, workdir) -> None:
    secret = ADMIN[1]
    host = team.uri.removeprefix("http://")
    result = run_cli(
        [
            "-m",
            "task.steps=3,4",
            f"tracking.uri=http://{ADMIN[0]}:{secret}@{host}",
            "tracking.experiment=team-secret",
        ],
        workdir,
        {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""},  # the URI's alone
    )
    assert result.returncode == 0, result.stderr[-2000:]  # the server answers 401 without it
    assert secret not in result.stdout and secret not in result.stderr
    assert "2 jobs: 2 finished" in result.stdout
    hydra_own = (".hydra", "multirun.yaml")  # Hydra's record of the command line
    for path in (workdir / "outputs").rglob("*"):
        if path.is_file() and not any(part in path.parts for part in hydra_own):
            assert secret not in path.read_text(errors="replace"), path
    runs = runs_of(admin, "team-secret")
    assert len(runs) == 3
    for run in runs:
        stored = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
        assert not [value for value in stored if secret in value], run.info.run_name
        for artifact in admin.list_artifacts(run.info.run_id):
            if artifact.path.endswith((".yaml", ".txt", ".json")):
                text = Path(admin.download_artifacts(run.info.run_id, artifact.path, str(workdir)))
                assert secret not in text.read_text(), artifact.path


def test_sync_logs_in_with_a_password_in_its_uri_and_keeps_it_out(team, admin, workdir) -> None:
    secret = ADMIN[1]
    host = team.uri.removeprefix("http://")
    offline = run_cli(
        ["task.steps=3", "tracking.offline=true", "tracking.experiment=team-sync"], workdir
    )
    assert offline.returncode == 0, offline.stderr[-2000:]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sync",
            "--tracking-uri",
            f"http://{ADMIN[0]}:{secret}@{host}",
            "outputs",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert secret not in done.stdout + done.stderr
    (run,) = runs_of(admin, "team-sync")
    assert run.info.status == "FINISHED"
    marks = [p.read_text() for p in (workdir / "outputs").rglob("journal.uploaded.json")]
    assert marks and not [text for text in marks if secret in text]


def test_the_report_logs_in_with_a_password_in_its_uri_and_keeps_it_out(
    team, admin, sweep, workdir
) -> None:
    secret = ADMIN[1]
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    parent = [r for r in runs_of(admin, "team-sweep") if r.data.tags.get("sweep") == "true"][0]
    report = run_cli(  # no login but the URI's (an empty one in the environment)
        ["--tracking-uri", _login_in_the_uri(team), "--parent", parent.info.run_id]
        + ["--out", "report"],
        workdir,
        team.env(None),
        module="experiments.report",
    )
    assert report.returncode == 0, report.stderr[-2000:]  # the server answers 401 without it
    assert "4 runs: 4 finished" in report.stdout
    assert secret not in report.stdout + report.stderr
    written = {path.name: path for path in (workdir / "report").iterdir()}
    assert [name for name in written if name.endswith(".png")]
    assert not [name for name, path in written.items() if secret.encode() in path.read_bytes()]
    logged = _artifact_texts(admin, parent.info.run_id, "report", workdir / "logged")
    assert set(written) <= {Path(path).name for path in logged}  # logged through the server
    assert not [path for path, text in logged.items() if secret in text]


def test_a_rerun_reads_a_run_with_a_password_in_its_uri_and_records_it_here(
    team, admin, single, workdir, store_uri
) -> None:
    secret = ADMIN[1]
    assert single.returncode == 0, single.stderr[-2000:]
    (published,) = runs_of(admin, "team-single")
    no_login = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
    again = rerun(  # recorded in the default store here: sqlite:///mlflow.db
        workdir, published.info.run_id, "--from", _login_in_the_uri(team), env=no_login
    )
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]  # 401 without it
    assert "verdict: reproduced" in again.stdout
    assert secret not in again.stdout + again.stderr
    local = MlflowClient(store_uri)
    (run,) = runs_of(local, "team-single")
    assert run.data.tags["rerun_of"] == published.info.run_id
    assert run.data.tags["reproduced"] == "true"
    assert "mlflow.note.content" in run.data.tags  # its description: how to rerun it
    stored = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
    assert not [value for value in stored if secret in value]
    texts = _artifact_texts(local, run.info.run_id, None, workdir / "artifacts")
    assert {"rerun.txt", "config.yaml", "overrides.yaml", "environment.json"} <= set(texts)
    assert not [path for path, text in texts.items() if secret in text]
    files = [path for path in (workdir / "outputs").rglob("*") if path.is_file()]
    assert files and not [path for path in files if secret.encode() in path.read_bytes()]
    assert len(runs_of(admin, "team-single")) == 1  # nothing new on the server


def _artifact_texts(
    client: MlflowClient, run_id: str, under: str | None, scratch: Path
) -> dict[str, str]:
    """The run's artifacts under ``under`` (all of them: None), by path, as text."""
    texts = {}
    for artifact in client.list_artifacts(run_id, under):
        if artifact.is_dir:
            texts.update(_artifact_texts(client, run_id, artifact.path, scratch))
        else:
            path = client.download_artifacts(run_id, artifact.path, str(scratch))
            texts[artifact.path] = Path(path).read_text(errors="replace")
    return texts


def test_a_store_on_postgresql_directly_bounds_its_connections_and_statements(team) -> None:
    from sqlalchemy import text

    from experiments.record.store.tracker import Tracker

    tracker = Tracker(team.postgres.create_database("bounded"), timeout_s=5.0)
    with tracker.bulk.engine.connect() as connection:  # the engine the points go through
        assert connection.execute(text("SHOW statement_timeout")).scalar() == "30s"
    # MLflow's own engine is opened with the same URI: it connects, and answers.
    assert tracker.client.search_runs([tracker.experiment_id("bounded")]) == []


def test_a_search_keeps_its_study_in_a_database_of_its_own_on_the_teams_postgresql(
    team, workdir
) -> None:
    storage = team.postgres.create_database("optuna")  # not MLflow's: docs/team.md
    # Set on every machine beside MLFLOW_TRACKING_URI, as docs/team.md says; no search names it.
    env = {**team.env(), "EXPERIMENTS_STUDY_STORAGE": storage}
    args = ["-m", "experiment=lr_search", "task.steps=10"]
    for n_trials, ran in ((2, "2 jobs: 2 finished"), (3, "1 job: 1 finished")):
        result = run_cli([*args, f"hydra.sweeper.n_trials={n_trials}"], workdir, env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ran in result.stdout  # topped up from the study in PostgreSQL
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 3
    assert not (workdir / "optuna.journal").exists()
