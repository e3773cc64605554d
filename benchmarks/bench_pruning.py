"""What pruning saves: ``experiment=lr_search`` with ``pruner=median`` against ``pruner=none``.

Both searches run the same seeded TPE search (``n_trials`` trials, the embedded store, each
in a fresh directory), side by side. For each: the optimizer steps its trials ran in all (a
finished trial's ``result/steps_run``, a pruned one's step it was stopped at, plus one), the
best loss found, and the wall time. Target (issue: a search that prunes): at most half the
steps, for a best loss within 10% of the unpruned search's.

Usage: python benchmarks/bench_pruning.py [--trials 20] [--every 10] [--after 0] [--pruner median]
       [--seeds 0,1,2]  (one same-seed pair of searches per TPE seed)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def search(directory: Path, pruner: str, args: argparse.Namespace, seed: int) -> float:
    """Run one search in ``directory``; its wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        "experiments",
        "-m",
        "experiment=lr_search",
        f"hydra.sweeper.pruner={pruner}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.prune_every={args.every}",
        f"hydra.sweeper.prune_after={args.after}",
        f"hydra.sweeper.sampler.seed={seed}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def steps_and_best(directory: Path) -> tuple[int, float, int]:
    """The steps the search's trials ran in all, its best loss, and how many were pruned."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimize")
    runs = client.search_runs([experiment.experiment_id], "tags.trial != ''")
    steps, best, pruned = 0, float("inf"), 0
    for run in runs:
        if "pruned" in run.data.tags:
            steps += int(run.data.tags["pruned"]) + 1
            pruned += 1
        elif run.info.status == "FINISHED":
            steps += int(run.data.metrics["result/steps_run"])
            best = min(best, run.data.metrics["objective/loss"])
    return steps, best, pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--after", type=int, default=0, help="hydra.sweeper.prune_after")
    parser.add_argument("--pruner", default="median", help="median or hyperband")
    parser.add_argument(
        "--seeds", default="0", help="TPE seeds, comma-separated: one pair of searches each"
    )
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(
        f"lr_search, {args.trials} trials, reports every {args.every} steps, "
        f"none pruned before step {args.after}; pruner={args.pruner} against none:"
    )
    ratios, changes = [], []
    for seed in seeds:
        found = {}
        with tempfile.TemporaryDirectory() as root:
            for pruner in ("none", args.pruner):
                directory = Path(root, pruner)
                directory.mkdir()
                seconds = search(directory, pruner, args, seed)
                found[pruner] = (*steps_and_best(directory), seconds)
        print(f"TPE seed {seed}:")
        for pruner, (steps, best, pruned, seconds) in found.items():
            print(
                f"  pruner={pruner:<9} {steps:6d} steps  best loss {best:.6g}  "
                f"{pruned:2d} pruned  {seconds:6.1f} s"
            )
        (steps_none, best_none, _, _), (steps_pruned, best_pruned, _, _) = found.values()
        ratios.append(steps_pruned / steps_none)
        changes.append((best_pruned - best_none) / abs(best_none))
        print(
            f"  steps ratio {ratios[-1]:.2f} (target <= 0.5); best loss "
            f"{best_pruned:.6g} vs {best_none:.6g}: {changes[-1]:+.1%} (target within 10%)"
        )
    if len(seeds) > 1:
        met = sum(r <= 0.5 and c <= 0.10 for r, c in zip(ratios, changes))
        print(
            f"over {len(seeds)} seeds: steps ratio median {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}); best loss change median "
            f"{statistics.median(changes):+.1%} ({min(changes):+.1%} to {max(changes):+.1%}); "
            f"both targets met for {met} of {len(seeds)}"
        )


if __name__ == "__main__":
    main()
