"""What MLflow's login cache saves a team's server: ``auth_cache_ttl_seconds`` off vs on.

Starts a PostgreSQL cluster of its own (as ``tests/test_team.py`` does) and two ``mlflow
server --app-name basic-auth`` on it, alike but for the cache (docs/team.md's settings, one
with ``auth_cache_ttl_seconds = 60``), then, alternating between them:

1. ``--requests`` logged-in requests one after another (``experiments/search``): the
   server's time per request;
2. ``python -m experiments task.steps=20`` recorded through each server, logged in as the
   admin (its requests: the run's creation, batches, heartbeats, artifacts, its end).

Usage: python benchmarks/bench_team_server.py [--requests 30] [--runs 3]
Needs PostgreSQL's server programs (Debian: postgresql) and the ``server`` extra.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.services import MlflowServer, Postgres  # noqa: E402

ADMIN = ("admin", "Bench-admin-pass-51")


def server(postgres: Postgres, root: Path, name: str, cache: bool) -> MlflowServer:
    config = root / f"{name}.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {postgres.create_database(f'{name}_auth')}\n"
        f"admin_username = {ADMIN[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        + ("auth_cache_ttl_seconds = 60\n" if cache else "")
    )
    started = MlflowServer(
        root / name,
        backend=postgres.create_database(name),
        app_name="basic-auth",
        workers=2,
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "bench-secret-key-" + "x" * 16,
        },
    )
    started.start()
    return started


def requests(uri: str, count: int) -> float:
    """Seconds per logged-in request, the median of ``count`` in a row."""
    login = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    times = []
    for _ in range(count):
        request = urllib.request.Request(
            f"{uri}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 1}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {login}"},
            method="POST",
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_run(uri: str, directory: Path) -> float:
    """Seconds for ``python -m experiments task.steps=20`` recorded through the server."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_USERNAME": ADMIN[0],
        "MLFLOW_TRACKING_PASSWORD": ADMIN[1],
    }
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "task.steps=20"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"the run failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-team-"))
    postgres = Postgres()
    postgres.start()
    servers = {}
    try:
        servers = {
            "without the cache": server(postgres, root, "nocache", cache=False),
            "with the cache": server(postgres, root, "cache", cache=True),
        }
        per_request: dict[str, list[float]] = {name: [] for name in servers}
        per_run: dict[str, list[float]] = {name: [] for name in servers}
        for started in servers.values():  # each worker's first requests: not counted
            requests(started.uri, 6)
        for repeat in range(args.runs):
            for name, started in servers.items():
                per_request[name].append(requests(started.uri, args.requests))
                per_run[name].append(one_run(started.uri, root / f"run-{repeat}"))
        print(f"basic-auth server on PostgreSQL, 2 workers; {args.runs} rounds, alternating")
        for name in servers:
            print(
                f"  {name:18s} {statistics.median(per_request[name]) * 1000:7.1f} ms a request"
                f"   {statistics.median(per_run[name]):6.2f} s a 20-step run"
            )
        off, on = servers
        print(
            f"  ratio (with / without): requests "
            f"{statistics.median(per_request[on]) / statistics.median(per_request[off]):.2f}, "
            f"runs {statistics.median(per_run[on]) / statistics.median(per_run[off]):.2f}"
        )
    finally:
        for started in servers.values():
            started.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
