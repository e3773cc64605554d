"""Overhead of a search per trial: the same jobs as a grid sweep and as an Optuna search.

Both run the same ``--jobs`` learning rates of the default minimize problem with Adam (the
basic launcher, one process, the embedded store): once as Hydra's grid sweep
(``optim.lr=a,b,...``), once as the project's search over ``choice(a,b,...)`` with the grid
sampler, its study kept in ``optuna.db`` (a fresh study each time). Each in its own
directory, alternating, ``--repeats`` times; the per-trial overhead is the difference of the
medians over the jobs. Target (issue: a search that persists): at most 0.1 s a trial.

Usage: python benchmarks/bench_search.py [--jobs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBLEM = ["optim=adam", "task.steps=20"]  # the default minimize problem


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = [f"{0.005 * (i + 1):.3f}" for i in range(args.jobs)]
    base = [sys.executable, "-m", "experiments", "-m", *PROBLEM]
    grid = [*base, f"optim.lr={','.join(rates)}"]
    search = [
        *base,
        "hydra/sweeper=optuna",
        "hydra.sweeper.sampler.name=grid",
        f"hydra.sweeper.n_trials={args.jobs}",
        f"optim.lr=choice({','.join(rates)})",
    ]
    times: dict[str, list[float]] = {"grid sweep": [], "search": []}
    with tempfile.TemporaryDirectory() as root:
        for name, command in (("warm-up grid", grid), ("warm-up search", search)):
            directory = Path(root, name.replace(" ", "-"))
            directory.mkdir()
            timed(command, directory)
        for repeat in range(args.repeats):
            for name, command in (("grid sweep", grid), ("search", search)):
                directory = Path(root, f"{name.replace(' ', '-')}-{repeat}")
                directory.mkdir()  # a fresh store and study each time
                times[name].append(timed(command, directory))
    grid_s, search_s = (statistics.median(times[name]) for name in ("grid sweep", "search"))
    print(f"{args.jobs} jobs, median of {args.repeats}:")
    print(f"  grid sweep  {grid_s:6.2f} s")
    print(f"  search      {search_s:6.2f} s  (grid sampler, study in optuna.db)")
    print(f"  overhead    {(search_s - grid_s) / args.jobs:+.3f} s a trial  (target: <= 0.1)")


if __name__ == "__main__":
    main()
