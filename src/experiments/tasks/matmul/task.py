"""Time a matrix product on one device (the tutorial's "PyTorch with GPU" section).

Defaults reproduce the tutorial's ``torch.mm`` of a (512 x 1024) by a (1024 x 512) matrix,
but measured properly (see :mod:`.timing`): warm median and spread over adaptive
repeats, the cold first call and the host-to-device copy apart, and a float64 check.
"""

from __future__ import annotations

import logging
from typing import Optional

from matplotlib.figure import Figure

from experiments import devices
from experiments.names import NOISY_TAG, objective, result
from experiments.tasks.context import TaskContext
from experiments.tasks.matmul.settings import MatmulConfig
from experiments.tasks.matmul.timing import MatmulTiming, measure_matmul

log = logging.getLogger(__name__)


TIME_MS = objective("time_ms")  # the objective run() returns: the median time of a product
NOISY_SPREAD = 0.10  # IQR / median above which a measurement is flagged; ~1 s of timing on
# an idle machine stays under 5%


def prepare() -> None:
    """What this task's start-up imports (torch's benchmark timer), done while the store opens."""
    import torch.utils.benchmark  # noqa: F401


def resolved_params(cfg: MatmulConfig) -> dict[str, int]:
    """The shape and thread count a run uses, whichever settings gave them (its params)."""
    m, k, n = cfg.shape()
    return {"m": m, "k": k, "n": n, "threads": cfg.threads_used()}


def run(cfg: MatmulConfig, ctx: TaskContext) -> float:
    """Measure the product and record it.

    Args:
        cfg: the validated ``task`` settings.
        ctx: device, recorder and seed from the runner.

    Returns:
        The warm median time of one product in milliseconds (``time_ms``).

    Raises:
        ConfigError: the device cannot multiply in ``task.dtype``.
        RunFailure: the size does not fit in memory, or the product is wrong.
    """
    m, k, n = cfg.shape()
    threads = cfg.threads_used()
    # Tagged before measuring, so a run that fails still says what it tried.
    ctx.recorder.set_tags(
        {
            "device.name": devices.describe(ctx.device),
            "dtype": cfg.dtype,
            "threads": threads,
            "shape": f"({m}x{k})@({k}x{n})",
        }
    )
    with ctx.recorder.quiet():  # nothing of the pipeline competes with the timed products
        timing = measure_matmul(
            m,
            k,
            n,
            dtype=cfg.dtype,
            device=ctx.device,
            threads=threads,
            warmup=cfg.warmup,
            min_run_time=cfg.min_run_time_s,
            seed=ctx.seed,
        )
    ctx.recorder.log_metrics(metrics(timing))
    noise = noisy(timing)
    if noise is not None:
        ctx.recorder.set_tags({NOISY_TAG: noise})
        log.warning("noisy measurement: %s", noise)
    ctx.recorder.log_figure(timing_figure(timing), "timing.png")
    log.info(
        "%s %s on %s: %.4g ms (IQR %.2g ms), %.1f GFLOP/s; cold %.4g ms",
        timing.shape,
        timing.dtype,
        timing.device,
        timing.median_ms,
        timing.iqr_ms,
        timing.gflops,
        timing.cold_ms,
    )
    return timing.median_ms


def noisy(timing: MatmulTiming) -> Optional[str]:
    """Why a measurement should not be trusted as it is, or None when it can be.

    A spread (IQR) over ``NOISY_SPREAD`` of the median means the products did not all run
    alike: something else used the device while they ran.
    """
    if not timing.relative_spread > NOISY_SPREAD:
        return None
    cause = (
        "another process used the CPU, or its clock changed"
        if timing.device.startswith("cpu")
        else f"another process used {timing.device}, or its clocks throttled"
    )
    return (
        f"IQR {timing.iqr_ms:.3g} ms is {timing.relative_spread:.0%} of the median "
        f"{timing.median_ms:.3g} ms (over {NOISY_SPREAD:.0%}): likely {cause} while it was "
        "timed; rerun it on an idle machine"
    )


def metrics(timing: MatmulTiming) -> dict[str, float]:
    """The run's metrics; ``h2d_ms`` and ``peak_mem_mb`` only where they were measured."""
    values = {
        TIME_MS: timing.median_ms,
        result("time_iqr_ms"): timing.iqr_ms,
        result("gflops"): timing.gflops,
        result("cold_ms"): timing.cold_ms,
        result("rel_error"): timing.rel_error,
        "repeats": timing.repeats,  # how it was measured: last in the UI, with no prefix
        "timing_s": timing.timing_s,
    }
    if timing.h2d_ms is not None:
        values[result("h2d_ms")] = timing.h2d_ms
    if timing.peak_mem_mb is not None:
        values[result("peak_mem_mb")] = timing.peak_mem_mb
    return values


def timing_figure(timing: MatmulTiming) -> Figure:
    """Bars of the cold call, the host-to-device copy and the warm median, on a log scale.

    The log scale keeps a warm GPU product of microseconds visible next to a cold call that
    includes library start-up: the gap is what the tutorial's one-shot timing mixes in.
    """
    bars = {"cold first call": (timing.cold_ms, "tab:red")}
    if timing.h2d_ms is not None:
        bars["host-to-device copy"] = (timing.h2d_ms, "tab:orange")
    bars["warm median"] = (timing.median_ms, "tab:blue")
    values = [value for value, _color in bars.values()]
    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    drawn = axes.bar(list(bars), values, color=[color for _value, color in bars.values()])
    axes.bar_label(drawn, labels=[f"{value:.3g} ms" for value in values])
    axes.set_yscale("log")
    # Bars start well below the shortest, with room above the tallest for its label.
    axes.set_ylim(min(values) / 3, max(values) * 3)
    axes.set_ylabel("milliseconds")
    axes.set_title(f"{timing.shape} {timing.dtype} on {timing.device}", fontsize=10)
    return figure
