"""Speed of sweeps: a 20-job minimize sweep against 20 runs of the hand-written baseline.

Measures, each in its own directory and MLflow store (warmed up first):

1. ``python -m experiments -m optim.lr=...`` with 20 learning rates (the basic launcher:
   one process; median of 3 sweeps) against a shell loop running
   ``benchmarks/baseline_minimize.py`` 20 times;
2. the per-job overhead inside that sweep, read back from MLflow: the time from one job's
   start to the next's, less the task's own work (``time/task_s``: optimising and plotting);
3. the report a sweep makes at its end, as the sweep's own log line times it (median of the
   three sweeps);
4. the joblib launcher with 2 workers against the basic launcher, on jobs long enough
   (``--joblib-steps``) for the work to matter next to each worker's start-up.

Usage: python benchmarks/bench_sweep.py [--jobs 20] [--joblib-steps 20000]
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

BASELINE = Path(__file__).with_name("baseline_minimize.py")


def timed(command: list[str], cwd: Path) -> float:
    return run(command, cwd)[0]


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds the command took, and what it printed (its log lines go to standard output)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout + result.stderr


REPORT_LINE = re.compile(r"report: \d+ figures? logged into the parent run under \S+ in ([\d.]+) s")


def sweep_command(jobs: int, *extra: str) -> list[str]:
    rates = ",".join(f"{0.01 * (i + 1):.2f}" for i in range(jobs))
    return [sys.executable, "-m", "experiments", "-m", f"optim.lr={rates}", *extra]


def per_job_overhead(directory: Path) -> float:
    """Median of (next job's start - this job's start - this job's task time), in seconds.

    Read from the newest sweep in ``directory``.
    """
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimize")
    parent = client.search_runs(
        [experiment.experiment_id], "tags.sweep = 'true'", order_by=["start_time DESC"]
    )[0]
    jobs = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["start_time ASC"],
    )
    gaps = [
        (later.info.start_time - job.info.start_time) / 1000 - job.data.metrics["time/task_s"]
        for job, later in zip(jobs, jobs[1:])
    ]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--joblib-steps", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        ours_dir, theirs_dir, joblib_dir = (Path(tmp) / name for name in ("ours", "hand", "jl"))
        for directory in (ours_dir, theirs_dir, joblib_dir):
            directory.mkdir()
        timed([sys.executable, "-m", "experiments", "task.steps=2"], ours_dir)  # warm-up
        timed([sys.executable, str(BASELINE), "2"], theirs_dir)
        # the sweep is short next to the loop, so one noisy moment weighs more: take the median
        sweeps = [run(sweep_command(args.jobs), ours_dir) for _ in range(3)]
        ours = statistics.median(seconds for seconds, _ in sweeps)
        reports = [float(REPORT_LINE.search(output).group(1)) for _, output in sweeps]
        loop = f"for i in $(seq {args.jobs}); do {sys.executable} {BASELINE} 20 || exit 1; done"
        theirs = timed(["bash", "-c", loop], theirs_dir)
        print(f"{args.jobs}-job sweep:        {ours:7.1f} s")
        print(f"{args.jobs} baseline runs:   {theirs:7.1f} s   ratio {ours / theirs:.3f}")
        print(f"per-job overhead in the sweep: {per_job_overhead(ours_dir):.3f} s (median)")
        print(f"the report at the sweep's end: {statistics.median(reports):.2f} s (median)")

        steps = f"task.steps={args.joblib_steps}"
        timed([sys.executable, "-m", "experiments", "task.steps=2"], joblib_dir)
        basic = timed(sweep_command(4, steps, "tracking.log_every=100"), joblib_dir)
        parallel = timed(
            sweep_command(
                4,
                steps,
                "tracking.log_every=100",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
            ),
            joblib_dir,
        )
        print(
            f"4 jobs of {args.joblib_steps:,} steps: basic {basic:.1f} s, "
            f"joblib n_jobs=2 {parallel:.1f} s, speed-up {basic / parallel:.2f}x"
        )


if __name__ == "__main__":
    main()
