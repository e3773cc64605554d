"""Shared fixtures: a real SQLite MLflow store in tmp_path and Hydra composition."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow import MlflowClient
from omegaconf import DictConfig

import experiments
from experiments import registration

# pytest imports this file as ``conftest``; the tests import ``tests.conftest``. One module
# under both names, so that what they share is one thing: STARTED, which the autouse
# fixture below empties, is the list the tests fill.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

CONF_DIR = str(Path(experiments.__file__).parent / "conf")
registration.register()


STARTED: list[subprocess.Popen] = []  # commands a test started in the background


@pytest.fixture(autouse=True)
def _no_process_left():
    """A test that fails midway leaves no command it started running on into the next."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()
    _end_joblib_workers()


def _end_joblib_workers() -> None:
    """End the worker pool a sweep in this process left (the joblib launcher's pool outlives
    a sweep, as it does in a user's process).

    Its workers keep the environment they started with, ``MLFLOW_TRACKING_URI`` and the
    working directory included: a later test's jobs would otherwise record into an earlier
    test's store.
    """
    executors = sys.modules.get("joblib.externals.loky.reusable_executor")
    if executors is not None and executors._executor is not None:
        executors._executor.shutdown(wait=True, kill_workers=True)
        executors._executor = None


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, as a user's: MLflow's default store will be created here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with no runs, its tables made by MLflow itself, once a session.

    Making MLflow's tables in a new SQLite file (its ~50 schema migrations) takes about 2 s;
    a copy of the file, a few milliseconds. Tests about a store that does not exist yet (its
    first opening, by several processes at once) use a path of their own instead.
    """
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(workdir: Path, empty_store: Path) -> str:
    """The tracking URI of a SQLite store in the test's directory (a copy of ``empty_store``)."""
    shutil.copyfile(empty_store, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.fixture
def new_store_uri(workdir: Path) -> str:
    """The tracking URI of a SQLite store in the test's directory that does not exist yet."""
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.fixture
def client(store_uri: str) -> MlflowClient:
    """A plain MLflow client on the test's store, to read results back independently."""
    return MlflowClient(tracking_uri=store_uri)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides, as the command line would."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides or [])
    finally:
        GlobalHydra.instance().clear()


def hydra_node(overrides: list[str]) -> DictConfig:
    """The ``hydra`` node Hydra would use: which sweeper, launcher and sweep parameters."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True).hydra
    finally:
        GlobalHydra.instance().clear()


def sigterm_in_a_weakref_callback() -> None:
    """Send this process SIGTERM from inside a weakref callback, where its handler then runs.

    Python prints an exception raised there as "Exception ignored" and drops it (as it does
    in an import's module-lock clean-up): what ``signals.raise_swallowed`` is for.
    """

    class Held:
        pass

    def terminate(_: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs here, inside the callback

    held = Held()
    reference = weakref.ref(held, terminate)
    del held  # the callback runs now
    assert reference() is None


def runs_of(client: MlflowClient, experiment: str) -> list:
    """Every run of an experiment, oldest first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def all_runs(client: MlflowClient) -> list:
    """Every run in every experiment of the store."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    module: str = "experiments",
):
    """Run ``python -m experiments ARGS`` (or another ``module``) in a subprocess, as the
    README shows it."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_terminal_summary(terminalreporter) -> None:
    """List the screenshots the browser tests saved (tests record them as a property)."""
    reports = [report for reports in terminalreporter.stats.values() for report in reports]
    paths = [
        value
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "screenshot"
    ]
    if paths:
        terminalreporter.section("screenshots of MLflow's UI")
        for path in dict.fromkeys(paths):
            terminalreporter.write_line(path)


# Modules whose tests share something costly set up once for the module (a server, a
# PostgreSQL cluster, a Slurm cluster's sweeps, a browser, a store of sweeps): each runs whole
# on one worker. Every other test goes to whichever worker is free.
SHARED = {
    "tests/test_report.py",
    "tests/test_server.py",
    "tests/test_slurm.py",
    "tests/test_team.py",
    "tests/test_ui.py",
}
# Of those, the ones that wait longest come first (a Slurm cluster's time limits, servers
# and databases, a browser): one of them left to the end would run alone while the other
# workers sit idle.
FIRST = ("slurm", "postgres", "ui", "server")


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by scope, where a scope is a module of ``SHARED`` or a test.

    (xdist's own ``--dist loadgroup`` rewrites node ids in a way pytest 9.2 ignores.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class SharedModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED else nodeid

    return SharedModulesTogether(config, log)


def pytest_collection_modifyitems(items) -> None:
    by_module: dict[str, list] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], []).append(item)

    def rank(module: str) -> int:
        marks = {mark.name for item in by_module[module] for mark in item.iter_markers()}
        return min((FIRST.index(name) for name in marks if name in FIRST), default=len(FIRST))

    order = sorted(by_module, key=rank)  # stable: otherwise in collection order
    items[:] = [item for module in order for item in by_module[module]]
