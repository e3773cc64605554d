"""The digits example through the pipeline against the same loop logged by hand, side by side.

Alternates ``python -m experiments task=digits optim=adam optim.lr=0.01 task.epochs=N``
with ``benchmarks/baseline_digits.py N`` (the example's own split, model and epoch, one
``mlflow.log_metrics`` call per epoch), each in a directory of its own with its own
``mlflow.db`` (made by a warm-up run of each first), ``--repeats`` times. Prints the median
time per epoch (the epoch loop with its records, over its epochs: the pipeline's run
records it as ``time/epoch_s``, the baseline prints it), their ratio, and the median wall
time of the whole commands. Needs the example installed (pip install -e examples/digits).

Usage: python benchmarks/bench_digits.py [--repeats 7] [--epochs 30]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

BASELINE = Path(__file__).with_name("baseline_digits.py")


def pipeline(directory: Path, epochs: int) -> tuple[float, float]:
    """(seconds per epoch as the run recorded it, wall seconds of the command)."""
    command = [sys.executable, "-m", "experiments", "task=digits", "optim=adam"]
    command += ["optim.lr=0.01", f"task.epochs={epochs}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=directory, check=True, capture_output=True)
    wall = time.perf_counter() - started
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    return run.data.metrics["time/epoch_s"], wall


def by_hand(directory: Path, epochs: int) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BASELINE), str(epochs)],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    return float(re.search(r"epoch_s=([0-9.e-]+)", done.stdout).group(1)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        ways = {"pipeline": pipeline, "by-hand": by_hand}
        directories = {name: Path(scratch, name) for name in ways}
        for name, way in ways.items():
            directories[name].mkdir()
            way(directories[name], args.epochs)  # warm-up: makes the store, fills caches
        epochs: dict[str, list[float]] = {name: [] for name in ways}
        walls: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                epoch_s, wall = way(directories[name], args.epochs)
                epochs[name].append(epoch_s)
                walls[name].append(wall)
    epoch = {name: statistics.median(found) for name, found in epochs.items()}
    wall = {name: statistics.median(found) for name, found in walls.items()}
    print(f"{args.epochs} epochs, median of {args.repeats}, alternating")
    for name in ways:
        spread = f"{min(epochs[name]) * 1000:.2f}-{max(epochs[name]) * 1000:.2f}"
        print(
            f"  {name:<9} {epoch[name] * 1000:7.2f} ms per epoch (range {spread} ms); "
            f"command {wall[name]:.2f} s"
        )
    print(f"time per epoch, pipeline / by hand: {epoch['pipeline'] / epoch['by-hand']:.3f}")
    print(f"whole command, pipeline / by hand: {wall['pipeline'] / wall['by-hand']:.3f}")


if __name__ == "__main__":
    main()
