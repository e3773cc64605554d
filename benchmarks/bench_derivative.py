"""What the derivative task costs.

    python benchmarks/bench_derivative.py                  # both parts, 3 rounds
    python benchmarks/bench_derivative.py --part overhead  # or --part cost

(a) overhead: the README's commands for the tutorial's three 自動微分 examples, each a fresh
    ``python -m experiments`` process, against the same three snippets written by hand with
    ``mlflow.log_metric`` per value (``baseline_derivative.py``, one process per snippet).
    Runs alternate (pipeline first in odd rounds, baseline first in even ones), each tool in
    its own directory whose MLflow store a warm-up run has already created.
(b) cost: the task's ``compute`` (autograd, no MLflow, no sympy) for order 1..4 in 1..5
    variables on the CPU, timed with ``torch.utils.benchmark.Timer``, per derivative; and the
    sympy cross-check (``against_sympy``, cache cleared, one call) for comparison.
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

import sympy
import torch
from torch.utils.benchmark import Timer

from experiments.tasks.derivative import task as derivative
from experiments.tasks.expressions import parse

HERE = Path(__file__).resolve().parent
PARTIAL = "x**2*y + 3*x*y**5 + x**3"
# The tutorial's three snippets as the README's commands: dy/dx, then d2y/dx2, then dz/dx, dz/dy.
PIPELINE = {
    "1 dy/dx": ["task=derivative", "task.order=1"],
    "2 d2y/dx2": ["task=derivative"],
    "3 partial": [
        "task=derivative",
        f'task.expr="{PARTIAL}"',
        "task.at={x: 1, y: 1}",
        "task.order=1",
    ],
}
BASELINE = {"1 dy/dx": ["1"], "2 d2y/dx2": ["2"], "3 partial": ["3"]}


def timed(args: list[str], cwd: Path) -> float:
    """Wall time of one process, which must succeed."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")
    }
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def overhead(rounds: int) -> None:
    pipeline = [sys.executable, "-m", "experiments", "device=cpu"]
    baseline = [sys.executable, str(HERE / "baseline_derivative.py")]
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp, "pipeline"), Path(tmp, "baseline")
        ours.mkdir(), theirs.mkdir()
        timed(pipeline, ours)  # warm-up: creates the store, fills the OS file cache
        timed(baseline, theirs)
        times: dict[str, dict[str, list[float]]] = {
            k: {"pipeline": [], "baseline": []} for k in PIPELINE
        }
        for round_ in range(rounds):
            for example in PIPELINE:
                jobs = [
                    ("pipeline", pipeline + PIPELINE[example], ours),
                    ("baseline", baseline + BASELINE[example], theirs),
                ]
                for tool, args, cwd in jobs if round_ % 2 == 0 else reversed(jobs):
                    times[example][tool].append(timed(args, cwd))
    print(f"(a) whole-run wall time per example, median of {rounds} alternating rounds (s)\n")
    print(f"{'example':<12} {'pipeline':>9} {'baseline':>9} {'ratio':>6}")
    totals = {"pipeline": 0.0, "baseline": 0.0}
    for example, by_tool in times.items():
        medians = {tool: statistics.median(values) for tool, values in by_tool.items()}
        for tool in totals:
            totals[tool] += medians[tool]
        ratio = medians["pipeline"] / medians["baseline"]
        print(
            f"{example:<12} {medians['pipeline']:>9.2f} {medians['baseline']:>9.2f} {ratio:>6.2f}"
        )
    ratio = totals["pipeline"] / totals["baseline"]
    print(f"{'all three':<12} {totals['pipeline']:>9.2f} {totals['baseline']:>9.2f} {ratio:>6.2f}")
    print(f"extra per run: {(totals['pipeline'] - totals['baseline']) / 3:.2f} s\n")


def expression_in(n: int) -> str:
    """A smooth function of x1..xn in which every variable meets its neighbour."""
    names = [f"x{i}" for i in range(1, n + 1)]
    terms = [f"sin({a})*{b}**2" for a, b in zip(names, names[1:] + names[:1])]
    return " + ".join(terms) + f" + exp(({' + '.join(names)})/{n})"


def cost(min_run_time: float) -> None:
    print(
        "(b) cost of the task's compute() on the CPU, float64 (Timer median, blocked_autorange)\n"
    )
    warm, at = parse("sin(x)*y"), {"x": 1.0, "y": 1.0}
    derivative.against_sympy(warm, at, derivative.compute(warm, at, 2), 2)  # sympy's set-up
    print(
        f"{'vars':>4} {'order':>5} {'values':>6} {'compute ms':>10} {'us/deriv':>9} {'sympy ms':>9}"
    )
    for n in range(1, 6):
        expression = parse(expression_in(n))
        point = {name: 0.1 * (i + 1) for i, name in enumerate(expression.variables)}
        for order in range(1, 5):
            timer = Timer(
                "compute(expression, point, order)",
                globals={
                    "compute": derivative.compute,
                    "expression": expression,
                    "point": point,
                    "order": order,
                },
            )
            seconds = timer.blocked_autorange(min_run_time=min_run_time).median
            values = derivative.compute(expression, point, order)
            sympy.core.cache.clear_cache()
            started = time.perf_counter()
            derivative.against_sympy(expression, point, values, order)
            sympy_s = time.perf_counter() - started
            derivatives = len(values) - 1  # f itself is not a derivative
            print(
                f"{n:>4} {order:>5} {derivatives:>6} {seconds * 1e3:>10.3f} "
                f"{seconds / derivatives * 1e6:>9.1f} {sympy_s * 1e3:>9.1f}"
            )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["overhead", "cost", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds for (a)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per point in (b)")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, sympy {sympy.__version__}, {torch.get_num_threads()} threads\n"
    )
    if args.part in ("overhead", "both"):
        overhead(args.rounds)
    if args.part in ("cost", "both"):
        cost(args.min_run_time)


if __name__ == "__main__":
    main()
