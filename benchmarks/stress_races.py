"""Races: processes that meet one store or one study at the same moment, many times over.

Not a timing: each scenario is repeated ``--rounds`` times and every round is checked; the
script prints one line per round and exits 1 if any round went wrong.

- ``sync``: ``--runs`` offline minimize runs (``task.steps=--steps``), each in a directory of
  its own, then as many ``python -m experiments.sync`` started together against one
  ``mlflow server --workers 1`` (``--backend postgres``: PostgreSQL behind it, a cluster of
  the script's own; ``sqlite``). Every sync exits 0; every run ends FINISHED with no error
  tag; every metric point of every journal is in the store exactly once.
- ``live``: the same runs recorded live, ``--runs`` commands started together against it.
- ``search``: 4 searches started together on a new study (``--storage sqlite``: ``optuna.db``
  beside a new ``mlflow.db``; ``journal``: Optuna's journal file). Every search exits 0; the
  study holds exactly ``n_trials`` COMPLETE trials, each with exactly one FINISHED run, and
  no other trial has a FINISHED run.
- ``sweep``: 4 sweeps started together on a new ``mlflow.db``: every sweep exits 0, every job
  a FINISHED child of its own parent, nothing in Default.
- ``stop``: a search stopped with SIGTERM after each of ``--delays`` seconds, then the same
  command again: the study and MLflow agree (as ``search``), nothing is left RUNNING.

Usage: python benchmarks/stress_races.py sync --backend postgres --rounds 5
       python benchmarks/stress_races.py search --storage journal --rounds 10
       python benchmarks/stress_races.py stop --delays 8:24:0.5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' services: a PostgreSQL cluster, an mlflow server
from tests.services import MlflowServer, Postgres  # noqa: E402

SEARCH = ["-m", "experiment=lr_search", "hydra.sweeper.study_name=s"]


def main() -> int:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="stress-races-"))
    try:
        return SCENARIOS[args.scenario](args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--delays", default="8:24:1", help="FROM:TO:STEP seconds (stop)")
    parser.add_argument("--keep", type=Path, help="copy a round that went wrong here")
    return parser.parse_args()


def command(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    environment.update(MPLBACKEND="Agg", **env)
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def together(commands: list[tuple[list[str], Path]], **env: str) -> list[tuple[int, str]]:
    """Start every command at once; their exit statuses and the tails of their stderr."""
    started = [command(args, cwd, **env) for args, cwd in commands]
    done = [(p, *p.communicate(timeout=1800)) for p in started]
    return [(p.returncode, err[-600:]) for p, _, err in done]


# --- sync and live: many processes, one server ---


def server_rounds(args: argparse.Namespace, scratch: Path) -> int:
    postgres = Postgres() if args.backend == "postgres" else None
    bad = 0
    try:
        if postgres is not None:
            postgres.start()
        for number in range(args.rounds):
            root = scratch / f"round{number}"
            backend = postgres.create_database(f"r{number}") if postgres else None
            server = MlflowServer(root / "server", backend=backend, workers=1)
            server.start()
            try:
                line = (sync_round if args.scenario == "sync" else live_round)(args, root, server)
            finally:
                server.stop()
            print(f"round {number}: {line}", flush=True)
            bad += not line.startswith("ok")
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"{args.scenario} on {args.backend}: {args.rounds - bad} of {args.rounds} rounds ok")
    return 1 if bad else 0


def run_args(args: argparse.Namespace) -> list[str]:
    return ["experiments", f"task.steps={args.steps}", "tracking.log_every=1"]


def sync_round(args: argparse.Namespace, root: Path, server: MlflowServer) -> str:
    directories = [root / f"run{i}" for i in range(args.runs)]
    for directory in directories:
        directory.mkdir(parents=True)
    offline = [([*run_args(args), "tracking.offline=true"], d) for d in directories]
    for status, err in together(offline[:2]) + together(offline[2:]):
        if status != 0:
            return f"an offline run failed: {err}"
    syncs = [
        (["experiments.sync", "outputs", "--tracking-uri", server.uri], d) for d in directories
    ]
    return check_runs(server.uri, directories, together(syncs))


def live_round(args: argparse.Namespace, root: Path, server: MlflowServer) -> str:
    directories = [root / f"run{i}" for i in range(args.runs)]
    for directory in directories:
        directory.mkdir(parents=True)
    runs = [([*run_args(args), f"tracking.uri={server.uri}"], d) for d in directories]
    return check_runs(server.uri, directories, together(runs))


def check_runs(uri: str, directories: list[Path], ended: list[tuple[int, str]]) -> str:
    problems = [f"exit {status}: {err.strip()[-300:]}" for status, err in ended if status != 0]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("minimize")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) != len(directories):
        problems.append(f"{len(runs)} runs in the store, not {len(directories)}")
    points = stored = 0
    for run in runs:
        if run.info.status != "FINISHED" or "error" in run.data.tags:
            problems.append(
                f"run {run.info.run_id} {run.info.status}: {run.data.tags.get('error')}"
            )
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            steps = [point.step for point in history]
            if len(steps) != len(set(steps)):
                problems.append(f"run {run.info.run_id} {key}: a step stored twice")
            stored += len(history)
    for directory in directories:
        for journal in directory.glob("outputs/**/journal*.jsonl"):
            for line in journal.read_text().splitlines():
                record = json.loads(line)
                if record.get("type") == "metrics":
                    points += len(record["values"])
    if stored != points:
        problems.append(f"{stored:,} points stored of {points:,} journaled")
    return "; ".join(problems) if problems else f"ok: {len(runs)} runs FINISHED, {stored:,} points"


# --- search, sweep and stop: many processes, one new study or store ---


def search_rounds(args: argparse.Namespace, scratch: Path) -> int:
    bad = 0
    for number in range(args.rounds):
        root = scratch / f"round{number}"
        root.mkdir()
        settings = [*SEARCH, "task.steps=10", f"hydra.sweeper.n_trials={args.trials}"]
        if args.storage == "journal":
            settings.append(f"hydra.sweeper.storage=journal:{root / 'optuna.journal'}")
        ended = together([(["experiments", *settings], root)] * 4)
        problems = [f"exit {s}: {e.strip()[-300:]}" for s, e in ended if s != 0]
        problems += agreement(root, args.storage, args.trials)
        line = "; ".join(problems) or f"ok: 4 searches, {args.trials} trials"
        print(f"round {number}: {line}", flush=True)
        bad += bool(problems)
    print(f"search on {args.storage}: {args.rounds - bad} of {args.rounds} rounds ok")
    return 1 if bad else 0


def agreement(root: Path, storage: str, n_trials: int) -> list[str]:
    """What is wrong between the study and MLflow (nothing: an empty list)."""
    if storage == "journal":
        from optuna.storages.journal import JournalFileBackend

        url = optuna.storages.JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    else:
        url = f"sqlite:///{root / 'optuna.db'}"
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimize")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("sweep") != "true"
    ]
    finished: dict[int, int] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            number = int(run.data.tags["trial"])
            finished[number] = finished.get(number, 0) + 1
    problems = []
    if len(complete) != n_trials:
        problems.append(f"{len(complete)} COMPLETE trials, not {n_trials}")
    if any(finished.get(n, 0) != 1 for n in complete):
        problems.append(f"COMPLETE trials {sorted(complete)}, FINISHED runs {finished}")
    if set(finished) - complete:
        problems.append(f"FINISHED runs of trials not COMPLETE: {sorted(set(finished) - complete)}")
    if any(run.info.status == "RUNNING" for run in client.search_runs([experiment.experiment_id])):
        problems.append("a run left RUNNING")
    return problems


def sweep_rounds(args: argparse.Namespace, scratch: Path) -> int:
    bad = 0
    for number in range(args.rounds):
        root = scratch / f"round{number}"
        root.mkdir()
        ended = together([(["experiments", "-m", "task.steps=3,4"], root)] * 4)
        problems = [f"exit {s}: {e.strip()[-300:]}" for s, e in ended if s != 0]
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        runs = client.search_runs(list(names))
        parents = {r.info.run_id for r in runs if r.data.tags.get("sweep") == "true"}
        jobs = [r for r in runs if r.info.run_id not in parents]
        if len(parents) != 4 or len(jobs) != 8:
            problems.append(f"{len(parents)} parents and {len(jobs)} jobs, not 4 and 8")
        if any(r.info.status != "FINISHED" for r in runs):
            problems.append("a run not FINISHED")
        if any(r.data.tags.get("mlflow.parentRunId") not in parents for r in jobs):
            problems.append("a job not under a parent")
        if any(names[r.info.experiment_id] != "minimize" for r in runs):
            problems.append("a run outside the minimize experiment")
        line = "; ".join(problems) or "ok: 4 sweeps, 8 jobs FINISHED under their parents"
        print(f"round {number}: {line}", flush=True)
        bad += bool(problems)
    print(f"sweep: {args.rounds - bad} of {args.rounds} rounds ok")
    return 1 if bad else 0


def stop_rounds(args: argparse.Namespace, scratch: Path) -> int:
    start, stop, step = (float(part) for part in args.delays.split(":"))
    delays = [round(start + i * step, 3) for i in range(int((stop - start) / step) + 1)]
    settings = [*SEARCH, "hydra.sweeper.n_trials=4", "task.steps=20000", "task.tol=null"]
    bad = 0
    for number, delay in enumerate(delays):
        root = scratch / f"round{number}"
        root.mkdir()
        first = command(["experiments", *settings], root)
        time.sleep(delay)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=600)
        again = command(["experiments", *settings], root)
        _, err_again = again.communicate(timeout=900)
        problems = (
            [] if again.returncode == 0 else [f"rerun exit {again.returncode}: {err_again[-300:]}"]
        )
        problems += agreement(root, "sqlite", 4)
        line = "; ".join(problems) or "ok"
        print(f"delay {delay:5.2f} s: first exit {first.returncode}; {line}", flush=True)
        bad += bool(problems)
        if problems and args.keep is not None:
            shutil.copytree(root, args.keep / root.name)
    print(f"stop: {len(delays) - bad} of {len(delays)} delays ok")
    return 1 if bad else 0


SCENARIOS = {
    "sync": server_rounds,
    "live": server_rounds,
    "search": search_rounds,
    "sweep": sweep_rounds,
    "stop": stop_rounds,
}

if __name__ == "__main__":
    sys.exit(main())
