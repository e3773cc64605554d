"""Real services for the tests: a throwaway PostgreSQL cluster and an `mlflow server`.

The cluster is made with ``initdb`` in a temporary directory (as the ``postgres`` user when
the tests run as root: PostgreSQL refuses to run as root), listens on 127.0.0.1 on a free
port, trusts local connections, and is stopped and removed at the end. Nothing here
touches a cluster or a server the tests did not start.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bindir() -> Optional[Path]:
    """Where PostgreSQL's server programs are (Debian keeps them off the PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def missing_postgres() -> Optional[str]:
    """Why a PostgreSQL cluster cannot be made here (None when it can)."""
    if postgres_bindir() is None:
        return "PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is missing: pip install -e '.[server]'"
    return None


class Postgres:
    """A PostgreSQL cluster of the tests' own."""

    USER = "experiments"

    def __init__(self) -> None:
        # Its own directory under /tmp: pytest's are private to the user running the tests.
        self.root = Path(tempfile.mkdtemp(prefix="experiments-postgres-"))
        self.port = free_port()
        self.bindir = postgres_bindir()
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, program: str, *args: str) -> None:
        assert self.bindir is not None
        subprocess.run(
            [*self._as, str(self.bindir / program), *args],
            check=True,
            capture_output=True,
            cwd="/",  # the postgres user may not enter the tests' working directory
        )

    def start(self) -> None:
        self.sockets.mkdir(parents=True)
        if self._as:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "-A", "trust", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -F"
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URI (psycopg2, named: see the README)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, name)
        return f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# A server starts in about 8 s on an idle 2-core machine, and was seen taking 40 s with the
# load average at 11 (it starts three Python processes that each import MLflow).
START_LIMIT_S = 180.0


class MlflowServer:
    """A real ``mlflow server`` process on 127.0.0.1, that a test can stop and start again.

    Args:
        root: its directory (the artifact store goes under it).
        backend: the backend store URI; a SQLite file in ``root`` by default.
        app_name: ``basic-auth`` for logins (then ``env`` holds the auth settings).
        env: environment variables for the server.
        store_from: an empty SQLite store to start from (copied to ``root``), so the server
            need not make MLflow's tables (its ~50 migrations) when it starts.
    """

    def __init__(
        self,
        root: Path,
        backend: Optional[str] = None,
        app_name: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
        workers: int = 1,
        store_from: Optional[Path] = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        self.app_name = app_name
        self.env = env or {}
        self.workers = workers
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        if store_from is not None and backend is None:
            shutil.copyfile(store_from, root / "mlflow.db")

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        if self.app_name:
            command += ["--app-name", self.app_name]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        # MLflow's job execution (GenAI evaluation jobs) starts six worker processes, each
        # importing MLflow: nothing here uses it, and a loaded machine pays for them.
        environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        self.process = subprocess.Popen(
            command,
            cwd=self.root,
            env={**environment, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        log = (self.root / "server.log").read_text(errors="replace")[-2000:]
        self.stop()
        pytest.fail(f"mlflow server did not start within {START_LIMIT_S:.0f} s:\n{log}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
