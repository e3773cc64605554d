"""Speed of the minimize pipeline against the hand-written baseline, side by side.

Runs ``python -m experiments task.steps=N``, ``benchmarks/baseline_minimize.py N`` (the same
per-step metrics, loss, gradient norm and x, logged by hand) and the same script with
``--only-loss`` in turn, each in its own directory with its own ``mlflow.db`` (created by a
warm-up run first, so none pays for creating the store), and prints the median wall times
and the ratios. ``--against SRC`` adds the pipeline of another checkout (its ``src``
directory, e.g. a worktree of an earlier commit; or that checkout's venv's ``python``, where
its plugins differ from this one's) to the same alternation, which measures what a change
costs. Then measures logging throughput into the embedded SQLite store, end
to end: through the run's journal and its uploader, as a run records.

Then the cost of recording inside the loop: ``time/optimize_s`` of a ``--loop-steps``
run recording every step against one recording only the last, alternating.

Usage: python benchmarks/bench_minimize.py [--repeats 5] [--steps 20 1000] [--points 20000]
                                           [--against ../old/src] [--loop-steps 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = Path(__file__).with_name("baseline_minimize.py")


def wall(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def compare(steps: int, repeats: int, root: Path, against: Path | None = None) -> dict[str, float]:
    """Median wall times: the pipeline, the same logging by hand, the loss alone by hand,
    and the pipeline of another checkout when ``against`` names its ``src``."""
    commands = {
        "pipeline": [sys.executable, "-m", "experiments", f"task.steps={steps}"],
        "by-hand": [sys.executable, str(BASELINE), str(steps)],
        "loss-only": [sys.executable, str(BASELINE), str(steps), "--only-loss"],
    }
    envs: dict[str, dict[str, str] | None] = dict.fromkeys(commands)
    if against is not None and against.is_file():  # another checkout's venv's python
        commands["against"] = [str(against), *commands["pipeline"][1:]]
        envs["against"] = None
    elif against is not None:
        commands["against"] = commands["pipeline"]
        envs["against"] = {**os.environ, "PYTHONPATH": str(against.resolve())}
    times: dict[str, list[float]] = {name: [] for name in commands}
    directories = {name: root / f"{name}-{steps}" for name in commands}
    for name, command in commands.items():
        directories[name].mkdir()
        wall(command, directories[name], envs[name])  # warm-up: creates the store, fills caches
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(wall(command, directories[name], envs[name]))
    return {name: statistics.median(times[name]) for name in commands}


def loop_cost(steps: int, repeats: int, root: Path) -> tuple[float, float]:
    """Median ``time/optimize_s`` with every step recorded, and with only the last one.

    The two alternate, each run in its own directory; the value is read from the journal.
    """
    from experiments.record import journal

    def optimize_s(every: int, directory: Path) -> float:
        command = [
            sys.executable,
            "-m",
            "experiments",
            f"task.steps={steps}",
            "optim.lr=1e-7",
            f"tracking.log_every={every}",
            f"hydra.run.dir={directory}",
        ]
        subprocess.run(command, cwd=root, check=True, capture_output=True)
        for record in journal.records(directory / "journal.jsonl"):
            if record["type"] == "metrics" and "time/optimize_s" in record["values"]:
                return float(record["values"]["time/optimize_s"])
        raise RuntimeError(f"no time/optimize_s in {directory}")

    every, last = [], []
    for index in range(repeats):
        every.append(optimize_s(1, root / f"loop-every-{index}"))
        last.append(optimize_s(steps, root / f"loop-last-{index}"))
    return statistics.median(every), statistics.median(last)


def throughput(points: int, root: Path) -> dict[str, float]:
    """Metric points per second into a fresh embedded store, three ways."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from experiments.record import live
    from experiments.record.journal import Header
    from experiments.record.store.tracker import Tracker

    uri = f"sqlite:///{root / 'throughput.db'}"
    Tracker(uri).experiment_id("throughput")  # create the store first, as a warm one is
    rates = {}
    header = Header(tracking_uri=uri, experiment="throughput", run_name="recorder")
    store = live.Store(uri, "tracking.uri")
    for name in ("warm-up", "run"):  # the first starts the recording process, as a run's start does
        (root / name).mkdir()
        started = time.perf_counter()
        recording = live.open_run(root / name, header, {}, store, live.Settings())
        recording.started()
        if name == "warm-up":
            recording.close("FINISHED")
    for step in range(points // 2):
        recording.recorder.log_metrics(
            {"loss": 1.0 / (step + 1), "grad_norm": float(step)}, step=step
        )
    assert recording.close("FINISHED").recorded
    rates["journal + recording process (this project)"] = points / (time.perf_counter() - started)
    experiment = Tracker(uri).experiment_id("throughput")
    client = MlflowClient(uri)
    run_id = client.create_run(experiment).info.run_id
    started = time.perf_counter()
    stamp = int(time.time() * 1000)
    for start in range(0, points, 1000):
        batch = [Metric("loss", float(i), stamp, i) for i in range(start, start + 1000)]
        client.log_batch(run_id, metrics=batch, synchronous=True)
    rates["MlflowClient.log_batch, 1,000 a call"] = points / (time.perf_counter() - started)
    single = 300
    started = time.perf_counter()
    for i in range(single):
        client.log_metric(run_id, "single", float(i), step=i)
    rates["MlflowClient.log_metric, one a call"] = single / (time.perf_counter() - started)
    client.set_terminated(run_id)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 1000])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout's src/ (or its venv's python) to compare with",
    )
    parser.add_argument("--loop-steps", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-minimize-") as tmp:
        root = Path(tmp)
        header = (
            f"{'steps':>6} {'pipeline s':>11} {'by hand s':>10} {'ratio':>6}"
            f" {'loss only s':>12} {'ratio':>6}"
        )
        print(header + (f" {'against s':>10} {'ratio':>6}" if args.against else ""))
        for steps in args.steps:
            times = compare(steps, args.repeats, root, args.against)
            ours, same, loss_only = times["pipeline"], times["by-hand"], times["loss-only"]
            line = (
                f"{steps:>6} {ours:>11.2f} {same:>10.2f} {ours / same:>6.2f}"
                f" {loss_only:>12.2f} {ours / loss_only:>6.2f}"
            )
            if args.against:
                line += f" {times['against']:>10.2f} {ours / times['against']:>6.2f}"
            print(line)
        every, last = loop_cost(args.loop_steps, args.repeats, root)
        print(
            f"\n{args.loop_steps:,}-step loop (time/optimize_s, median of {args.repeats}): every "
            f"step recorded {every:.2f} s, only the last {last:.2f} s: {every / last:.2f}x"
        )
        print(f"\nlogging throughput, {args.points:,} points into a fresh SQLite store:")
        for name, rate in throughput(args.points, root).items():
            print(f"  {name:<40} {rate:>9,.0f} points/s")


if __name__ == "__main__":
    main()
