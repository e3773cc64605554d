"""Load: many parallel jobs into one store, and many long runs in one SQLite store.

1. ``--workers`` joblib workers x ``--jobs`` minimize jobs into a fresh ``mlflow.db``, then
   the same against a real ``mlflow server`` (SQLite behind it): wall time, and a check
   that every job is a FINISHED child of the one parent, none in Default, none RUNNING.
2. ``--runs`` runs of about ``--points`` metric points each (a minimize sweep recording
   loss, gradient norm and x at every step) into one SQLite store: the time to record
   them, then the time of ``search_runs`` over all of them and of
   ``python -m experiments.report`` on the sweep.

Usage: python benchmarks/bench_load.py [--workers 4] [--jobs 50] [--runs 100]
                                        [--points 10000] [--skip-server]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def check_sweep(client: MlflowClient, jobs: int) -> str:
    """What the store holds after a sweep of ``jobs`` jobs, as one line."""
    experiment = client.get_experiment_by_name("minimize")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [run for run in runs if run.data.tags.get("sweep") == "true"]
    children = [run for run in runs if run.data.tags.get("sweep") != "true"]
    assert len(parents) == 1, f"{len(parents)} parent runs"
    linked = sum(
        run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for run in children
    )
    finished = sum(run.info.status == "FINISHED" for run in children)
    running = sum(run.info.status == "RUNNING" for run in runs)
    default = client.get_experiment_by_name("Default")
    strays = len(client.search_runs([default.experiment_id])) if default else 0
    ok = linked == finished == len(children) == jobs and running == 0 and strays == 0
    return (
        f"{len(children)} child runs, {finished} FINISHED, {linked} under the parent "
        f"({parents[0].info.status}), {running} RUNNING, {strays} in Default: "
        + ("ok" if ok else "NOT OK")
    )


def parallel(root: Path, workers: int, jobs: int, uri: str | None) -> None:
    directory = root / ("server" if uri else "sqlite")
    directory.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    command = [
        sys.executable,
        "-m",
        "experiments",
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={workers}",
        "task.steps=20",
        f"seed=range(0,{jobs})",
    ]
    elapsed = timed(command, directory, env)
    client = MlflowClient(uri or f"sqlite:///{directory / 'mlflow.db'}")
    where = f"mlflow server ({uri})" if uri else "a fresh mlflow.db"
    print(f"{workers} workers x {jobs // workers} jobs into {where}: {elapsed:.1f} s")
    print(f"  {check_sweep(client, jobs)}")


def long_runs(root: Path, runs: int, points: int) -> None:
    directory = root / "long"
    directory.mkdir()
    steps = points // 3  # loss, grad_norm and x at each step, and the final point
    command = [
        sys.executable,
        "-m",
        "experiments",
        "-m",
        f"task.steps={steps}",
        "optim.lr=1e-4",
        f"seed=range(0,{runs})",
    ]
    elapsed = timed(command, directory)
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimize")
    total = 3 * (steps + 1) * runs
    print(
        f"{runs} runs x {3 * (steps + 1):,} points ({total:,} points) recorded in {elapsed:.1f} s "
        f"({total / elapsed:,.0f} points/s with the tasks' own work)"
    )
    started = time.perf_counter()
    found = client.search_runs([experiment.experiment_id], max_results=5000)
    print(f"  search_runs over them: {time.perf_counter() - started:.2f} s ({len(found)} runs)")
    parent = next(run for run in found if run.data.tags.get("sweep") == "true")
    report = [sys.executable, "-m", "experiments.report", "--parent", parent.info.run_id]
    print(f"  python -m experiments.report --parent ...: {timed(report, directory):.1f} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server_dir = root / "server-store"
    server_dir.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{server_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(server_dir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=server_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1):
                return process, uri
        except OSError:
            time.sleep(0.5)
    process.kill()
    sys.exit("mlflow server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per worker")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    jobs = args.workers * args.jobs
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        parallel(root, args.workers, jobs, None)
        if not args.skip_server:
            server, uri = start_server(root)
            try:
                parallel(root, args.workers, jobs, uri)
            finally:
                server.terminate()
                server.wait(timeout=30)
        long_runs(root, args.runs, args.points)


if __name__ == "__main__":
    main()
