"""matmul's own figures in a sweep's report (``Task.report``): time and throughput against
size per device and dtype, and the GPU's speed-up over the CPU where both were timed.

Drawn where the report is made, without torch. Where several runs share a point (the same
device, dtype and size in an experiment holding reruns), the figures show their median; a
run whose timings spread widely (its ``noisy`` tag) is a red cross over its line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from matplotlib.figure import Figure

from experiments import names
from experiments.reporting import aligned, as_number, group, median_line, medians, number, ticks_at

SIZE_LABEL = "size n (n x n; the cube root of m*k*n otherwise)"


@dataclass(frozen=True)
class MatmulResult:
    """One matmul run: where and in what it multiplied, and how fast."""

    device: str
    dtype: str
    size: float  # n for n x n; the cube root of m*k*n otherwise
    time_ms: float
    gflops: float
    noisy: bool = False  # its timings spread widely (the run's ``noisy`` tag says why)


@dataclass(frozen=True)
class Speedup:
    """A GPU's warm time against the CPU's, for one size and dtype."""

    size: float
    dtype: str
    device: str
    cpu_ms: float
    device_ms: float

    @property
    def ratio(self) -> float:
        """How many times faster the device is than the CPU."""
        return self.cpu_ms / self.device_ms


def figures(runs: Sequence[Any]) -> dict[str, Any]:
    """``matmul.png``, and ``matmul_speedup.png`` with its table where a GPU and the CPU
    timed the same size and dtype; from the FINISHED runs (``api.ReportRun``)."""
    results = matmul_results(run for run in runs if run.status == "FINISHED")
    if not results:
        return {}
    found: dict[str, Any] = {"matmul.png": matmul_figure(results)}
    rows = speedups(results)
    if rows:
        found["matmul_speedup.png"] = speedup_figure(rows)
        found["matmul_speedup.txt"] = speedup_table(rows)
    return found


def matmul_results(runs: Iterable[Any]) -> list[MatmulResult]:
    """The runs that recorded a time and a throughput, as :class:`MatmulResult`."""
    found = []
    for run in runs:
        metrics, params, tags = names.results(run.metrics), run.params, run.tags
        size = matmul_size(params)
        if size is None or "time_ms" not in metrics or "gflops" not in metrics:
            continue
        dtype = tags.get("dtype") or params.get("task.dtype", "?")
        device = tags.get("device", "?")
        noisy = names.NOISY_TAG in tags
        found.append(
            MatmulResult(device, dtype, size, metrics["time_ms"], metrics["gflops"], noisy)
        )
    return found


def matmul_size(params: dict[str, str]) -> float | None:
    """``task.size``, or the cube root of ``task.m * task.k * task.n`` when it is null."""
    size = as_number(params.get("task.size"))
    if size is not None:
        return size
    sides = [as_number(params.get(f"task.{key}")) for key in ("m", "k", "n")]
    if any(side is None for side in sides):
        return None
    return math.prod(sides) ** (1 / 3)  # type: ignore[arg-type]


def speedups(results: Sequence[MatmulResult]) -> list[Speedup]:
    """CPU time / device time for each device, dtype and size that both have."""
    cpu = medians(((r.dtype, r.size), r.time_ms) for r in results if r.device == "cpu")
    other = medians(((r.device, r.dtype, r.size), r.time_ms) for r in results if r.device != "cpu")
    return [
        Speedup(size, dtype, device, cpu[(dtype, size)], ms)
        for (device, dtype, size), ms in sorted(other.items())
        if (dtype, size) in cpu
    ]


def matmul_figure(results: Sequence[MatmulResult]) -> Figure:
    """Time and GFLOP/s against size (log-log), one line per (device, dtype)."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    time_ax, gflops_ax = figure.subplots(1, 2)
    groups = group(results, lambda r: f"{r.device} {r.dtype}")
    for key, members in groups.items():
        time_ax.plot(*median_line((r.size, r.time_ms) for r in members), "o-", label=key)
        gflops_ax.plot(*median_line((r.size, r.gflops) for r in members), "o-", label=key)
    noisy = [r for r in results if r.noisy]
    if noisy:  # drawn over their line: a point to rerun before trusting it
        shown = "noisy: rerun (its run's noisy tag says why)"
        for ax, values in (
            (time_ax, [r.time_ms for r in noisy]),
            (gflops_ax, [r.gflops for r in noisy]),
        ):
            ax.plot([r.size for r in noisy], values, "x", color="red", ms=11, mew=2.2, label=shown)
    time_ax.set(title="warm time of one product", ylabel="time (ms)")
    gflops_ax.set(title="throughput", ylabel="GFLOP/s")
    for ax in (time_ax, gflops_ax):
        ax.set(xscale="log", yscale="log", xlabel=SIZE_LABEL)
        ticks_at(ax, [r.size for r in results])
        ax.grid(True, which="both", alpha=0.4)
        ax.legend(fontsize="small")
    return figure


def speedup_figure(rows: Sequence[Speedup]) -> Figure:
    """CPU time / device time against size, one line per (device, dtype); 1 = as fast."""
    figure = Figure(figsize=(7, 4.8), layout="constrained")
    ax = figure.subplots()
    for key, members in group(rows, lambda r: f"{r.device} {r.dtype}").items():
        ax.plot(*median_line((r.size, r.ratio) for r in members), "o-", label=key)
    ax.axhline(1.0, color="gray", lw=0.8, label="_as fast as the CPU")
    ax.set(xscale="log", yscale="log", xlabel=SIZE_LABEL, ylabel="speed-up over the CPU (x)")
    ticks_at(ax, [r.size for r in rows])
    ax.set_title("GPU / CPU speed-up (same dtype and size)")
    ax.grid(True, which="both", alpha=0.4)
    ax.legend(fontsize="small")
    return figure


def speedup_table(rows: Sequence[Speedup]) -> str:
    """Each size and dtype timed on the CPU and a GPU: both times and the ratio."""
    lines = [("size", "dtype", "cpu ms", "device", "device ms", "speed-up")]
    for row in rows:
        lines.append(
            (
                number(row.size),
                row.dtype,
                number(row.cpu_ms),
                row.device,
                number(row.device_ms),
                f"{row.ratio:.3g}x",
            )
        )
    return aligned(lines)
