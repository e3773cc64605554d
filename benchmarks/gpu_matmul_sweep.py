"""Sweep matmul sizes and dtypes on one device and print a table; needs only torch.

    bash benchmarks/gpu_check.sh                              # cuda, 512..8192, float32 + bfloat16
    bash benchmarks/gpu_check.sh --device cpu --max-size 1024 # a dry run without a GPU

Drives ``experiments.tasks.matmul.timing`` directly (no Hydra, no MLflow), so it runs wherever
torch is installed. A point that cannot run (dtype unsupported, size too big) prints its reason
and the sweep goes on; the exit status is non-zero if any point failed. On an H100 or H200 bfloat16
peaks near 790 TFLOP/s at 8192 x 8192; the last line compares the best bfloat16 point with it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from experiments import devices
from experiments.errors import ConfigError, RunFailure
from experiments.tasks.matmul.timing import DTYPES, MatmulTiming, measure_matmul

BF16_PEAK_TFLOPS = 790.0  # dense bf16 matmul peak of an H100/H200 SXM, from the issue
TARGET_FRACTION = 0.85

HEADER = (
    f"{'size':>6} {'dtype':>9} {'median ms':>10} {'IQR ms':>8} {'spread':>7} {'TFLOP/s':>8} "
    f"{'cold ms':>9} {'h2d ms':>8} {'rel error':>10} {'peak MiB':>9} {'repeats':>7}"
)


def sizes_up_to(smallest: int, largest: int) -> list[int]:
    """Powers of two from ``smallest`` to ``largest``, both included."""
    sizes, size = [], smallest
    while size <= largest:
        sizes.append(size)
        size *= 2
    return sizes


def row(result: MatmulTiming) -> str:
    """One table row; ``-`` where a value is not measured on this device."""
    h2d = f"{result.h2d_ms:8.3f}" if result.h2d_ms is not None else f"{'-':>8}"
    peak = f"{result.peak_mem_mb:9.0f}" if result.peak_mem_mb is not None else f"{'-':>9}"
    return (
        f"{result.m:>6} {result.dtype:>9} {result.median_ms:10.4f} {result.iqr_ms:8.4f} "
        f"{result.relative_spread:7.1%} {result.gflops / 1e3:8.2f} {result.cold_ms:9.3f} "
        f"{h2d} {result.rel_error:10.2e} {peak} {result.repeats:>7}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="matmul timing sweep (experiments.tasks.matmul.timing)"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or mps")
    parser.add_argument("--min-size", type=int, default=512)
    parser.add_argument("--max-size", type=int, default=8192)
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"from {', '.join(DTYPES)}")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="timing s per point")
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = devices.resolve(args.device)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{devices.describe(device)} ({device}); torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; float32 matmul precision "
        f"{torch.get_float32_matmul_precision()}; {args.min_run_time:g} s timing per point"
    )
    print(HEADER)
    results, failures = [], 0
    for dtype in args.dtypes.split(","):
        for size in sizes_up_to(args.min_size, args.max_size):
            try:
                result = measure_matmul(
                    size,
                    size,
                    size,
                    dtype=dtype,
                    device=device,
                    warmup=args.warmup,
                    min_run_time=args.min_run_time,
                )
            except (ConfigError, RunFailure) as error:
                failures += 1
                print(f"{size:>6} {dtype:>9}  FAILED: {error}")
                continue
            results.append(result)
            print(row(result), flush=True)
    print_peak_check(results)
    return 1 if failures else 0


def print_peak_check(results: list[MatmulTiming]) -> None:
    """Compare the best bfloat16 throughput with the H100/H200 peak the issue quotes."""
    bf16 = [result for result in results if result.dtype == "bfloat16"]
    if not bf16 or not bf16[0].device.startswith("cuda"):
        return
    best = max(bf16, key=lambda result: result.gflops)
    fraction = best.gflops / 1e3 / BF16_PEAK_TFLOPS
    verdict = "meets" if fraction >= TARGET_FRACTION else "is below"
    print(
        f"best bfloat16: {best.gflops / 1e3:.1f} TFLOP/s at {best.m} = {fraction:.1%} of "
        f"{BF16_PEAK_TFLOPS:g} TFLOP/s; {verdict} the {TARGET_FRACTION:.0%} target "
        "(meaningful on H100/H200 only)"
    )


if __name__ == "__main__":
    sys.exit(main())
