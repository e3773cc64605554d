"""Fidelity of the matmul task's timing on the CPU.

    python benchmarks/bench_matmul.py                 # 1024 x 1024 float32, 3 rounds

Compares, interleaved round by round (so drift of a shared machine hits all alike), the
task's ``gflops``, and the same from the whole command (``python -m experiments
task=matmul``, its recording process running beside it), with
  * a careful reference: ``torch.utils.benchmark.Timer`` on all threads, ``blocked_autorange``;
  * numpy's matmul at the same size (its own BLAS and threads);
  * Timer left at its default of ONE thread: the pitfall the task avoids.
Targets from the issue: task within 5% of the reference and 10% of numpy; the task's relative
spread (IQR / median) under 5%; about 1 s of timing per size point.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Timer

from experiments.record import journal
from experiments.tasks.context import MemoryRecorder, TaskContext
from experiments.tasks.matmul import task as matmul
from experiments.tasks.matmul.timing import default_threads, gflops


def task_point(size: int, min_run_time: float, output_dir: Path) -> dict[str, float]:
    """The task itself, as the runner calls it: its gflops, spread and timing budget."""
    recorder = MemoryRecorder()
    ctx = TaskContext(torch.device("cpu"), recorder, optim=None, seed=0, output_dir=output_dir)
    matmul.run(matmul.MatmulConfig(size=size, min_run_time_s=min_run_time), ctx)
    return {
        "gflops": recorder.last("result/gflops"),
        "spread": recorder.last("result/time_iqr_ms") / recorder.last("objective/time_ms"),
        "timing_s": recorder.last("timing_s"),
    }


def pipeline_gflops(size: int, min_run_time: float, directory: Path) -> float:
    """The whole command, recording process included: ``python -m experiments task=matmul``.

    Its recording process stays idle while the products are timed; this shows whether it
    costs the measurement anything. The result is read from the run's journal.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments",
            "task=matmul",
            "device=cpu",
            f"task.size={size}",
            f"task.min_run_time_s={min_run_time}",
            f"tracking.uri=sqlite:///{directory / 'mlflow.db'}",
            f"hydra.run.dir={directory / 'run'}",
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    newest = max((directory / "run").glob("journal*.jsonl"), key=lambda p: p.stat().st_mtime)
    key = "result/gflops"
    values = [r for r in journal.records(newest) if r["type"] == "metrics" and key in r["values"]]
    return float(values[-1]["values"][key])


def reference_gflops(size: int, min_run_time: float, threads: int) -> float:
    """The tutorial's ``torch.mm(a, b)`` under Timer with ``threads`` threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timer = Timer("torch.mm(a, b)", globals={"torch": torch, "a": a, "b": b}, num_threads=threads)
    timer.timeit(3)  # warm-up outside the measurement, as the task does
    return gflops(size, size, size, timer.blocked_autorange(min_run_time=min_run_time).median)


def numpy_gflops(size: int, min_run_time: float) -> float:
    """numpy's matmul of float32 operands, timed the same way (Timer only drives the loop)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, size), dtype=np.float32)
    y = rng.standard_normal((size, size), dtype=np.float32)
    timer = Timer("np.matmul(x, y)", globals={"np": np, "x": x, "y": y})
    timer.timeit(3)
    return gflops(size, size, size, timer.blocked_autorange(min_run_time=min_run_time).median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per point")
    args = parser.parse_args()
    threads = default_threads()
    print(f"torch {torch.__version__}, numpy {np.__version__}, {threads} threads")
    print(f"{args.size} x {args.size} float32 on the CPU, {args.rounds} interleaved rounds\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            task = task_point(args.size, args.min_run_time, Path(tmp))
            row = {
                **task,
                "pipeline": pipeline_gflops(args.size, args.min_run_time, Path(tmp)),
                "reference": reference_gflops(args.size, args.min_run_time, threads),
                "numpy": numpy_gflops(args.size, args.min_run_time),
                "one_thread": reference_gflops(args.size, args.min_run_time, 1),
            }
            rows.append(row)
            print(
                f"round {round_}: task {row['gflops']:6.1f}  command {row['pipeline']:6.1f}  "
                f"reference {row['reference']:6.1f}  "
                f"numpy {row['numpy']:6.1f}  Timer@1 thread {row['one_thread']:6.1f} GFLOP/s; "
                f"task spread {row['spread']:.1%}, timing {row['timing_s']:.2f} s"
            )
    print_summary(rows)


def print_summary(rows: list[dict[str, float]]) -> None:
    """Medians over rounds; ratios are taken within a round, where the load was shared."""

    def median(value) -> float:
        return statistics.median(value(row) for row in rows)

    print("\nmedians over rounds:")
    print(f"  task / reference = {median(lambda r: r['gflops'] / r['reference']):.3f}  (>= 0.95)")
    command = median(lambda r: r["pipeline"] / r["reference"])
    print(f"  command (recording process running) / reference = {command:.3f}  (>= 0.95)")
    print(f"  task / numpy     = {median(lambda r: r['gflops'] / r['numpy']):.3f}  (>= 0.90)")
    print(f"  Timer at 1 thread / task = {median(lambda r: r['one_thread'] / r['gflops']):.3f}")
    print(f"  task spread (IQR/median) = {median(lambda r: r['spread']):.1%}  (< 5%)")
    print(f"  task timing per point    = {median(lambda r: r['timing_s']):.2f} s  (budget ~1 s)")


if __name__ == "__main__":
    main()
