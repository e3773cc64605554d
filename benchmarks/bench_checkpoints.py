"""What checkpoints cost, and how soon a resumed run is back at work; side by side.

1. A ``--steps`` minimize run checkpointing every ``--every`` steps against the same run
   with none (``checkpoint.every_steps=null checkpoint.every_s=null``), alternating,
   ``--repeats`` times, each in a directory of its own: the median of ``time/optimize_s``
   (the loop, its checkpoints included) and of the whole command's wall time.
2. The time from a command's start to its first recorded step: a fresh run's
   (``python -m experiments``) against a resumed one's (``python -m experiments.resume``
   of a run stopped with SIGTERM halfway, its checkpoint saved at the stop), alternating:
   the start is taken just before the process is started, the first step is the first
   metric record of the attempt's own journal.

Usage: python benchmarks/bench_checkpoints.py [--repeats 5] [--steps 20000] [--every 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def run(directory: Path, args: list[str]) -> tuple[float, float]:
    """(time/optimize_s of the run, wall seconds of the command)."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=directory,
        env=ENV,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimize")
    (found,) = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    return found.data.metrics["time/optimize_s"], wall


def first_step_ms(journal: Path) -> int:
    """When the journal's first metric record was written (ms since the epoch)."""
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "metrics":
            return int(record["time"])
    raise RuntimeError(f"{journal}: no metric record")


def fresh_start(directory: Path, steps: int) -> float:
    directory.mkdir(parents=True)
    began = time.time()
    subprocess.run(
        [sys.executable, "-m", "experiments", f"task.steps={steps}", "hydra.run.dir=run"],
        cwd=directory,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return first_step_ms(directory / "run" / "journal.jsonl") / 1000 - began


def resumed_start(directory: Path, steps: int) -> float:
    """Stop a run halfway with SIGTERM, then time its resume to its first new step."""
    directory.mkdir(parents=True)
    args = [f"task.steps={steps}", "hydra.run.dir=run", "checkpoint.every_steps=null"]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", *args],
        cwd=directory,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = directory / "run" / "journal.jsonl"
    while True:  # halfway: the journal's metric records
        if journal.exists() and journal.read_text().count('"type":"metrics"') >= steps // 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait()
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name("minimize").experiment_id])
    began = time.time()
    subprocess.run(
        [sys.executable, "-m", "experiments.resume", stopped.info.run_id],
        cwd=directory,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return first_step_ms(directory / "run" / "journal-2.jsonl") / 1000 - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--every", type=int, default=1000)
    args = parser.parse_args()
    ways = {
        "checkpoints": [f"task.steps={args.steps}", f"checkpoint.every_steps={args.every}"],
        "none": [
            f"task.steps={args.steps}",
            "checkpoint.every_steps=null",
            "checkpoint.every_s=null",
        ],
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, given in ways.items():
            run(root / name, given)  # warm-up: makes the store, fills caches
        loop: dict[str, list[float]] = {name: [] for name in ways}
        wall: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, given in ways.items():
                optimize_s, seconds = run(root / name, given)
                loop[name].append(optimize_s)
                wall[name].append(seconds)
        starts: dict[str, list[float]] = {"fresh": [], "resumed": []}
        for number in range(args.repeats):
            starts["fresh"].append(fresh_start(root / f"fresh{number}", args.steps))
            starts["resumed"].append(resumed_start(root / f"resumed{number}", args.steps))
    median = {name: statistics.median(found) for name, found in loop.items()}
    walls = {name: statistics.median(found) for name, found in wall.items()}
    print(
        f"{args.steps} steps, a checkpoint every {args.every} "
        f"(median of {args.repeats}, alternating)"
    )
    for name in ways:
        print(f"  {name:<12} time/optimize_s {median[name]:.3f} s; command {walls[name]:.2f} s")
    print(f"loop, checkpoints / none: {median['checkpoints'] / median['none']:.3f}")
    print(f"command, checkpoints / none: {walls['checkpoints'] / walls['none']:.3f}")
    first = {name: statistics.median(found) for name, found in starts.items()}
    print(
        f"to the first recorded step: fresh run {first['fresh']:.2f} s, resumed run "
        f"{first['resumed']:.2f} s ({first['resumed'] / first['fresh']:.2f}x)"
    )


if __name__ == "__main__":
    main()
