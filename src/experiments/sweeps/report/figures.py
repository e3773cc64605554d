"""What the report compares, read from MLflow runs, and the figures that show it.

Each task has a small record type built from its runs (``*_results``) and figure functions
that take those records and return a :class:`matplotlib.figure.Figure` (object API, no
pyplot). Where several runs share a point (the same device, dtype and size in an
experiment holding reruns), the figures show their median.

Steps to converge (minimize): a run stopped by ``task.tol`` converged at ``steps_run``;
otherwise it converged at the first recorded step from which the loss stays within
``1e-6 * (1 + |final loss|)`` of its final value up to the end. A run whose loss only
reaches that band at its last point did not converge (shown as a gap and ``not settled``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from mlflow import MlflowClient
from mlflow.entities import Run

from experiments import names

CONVERGED_RTOL = 1e-6
SIZE_LABEL = "size n (n x n; the cube root of m*k*n otherwise)"
MAX_TICKS = 12  # label every swept value up to this many; matplotlib's own ticks beyond


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


@dataclass(frozen=True)
class MinimizeResult:
    """One minimize run: its settings, its loss curve and when it converged."""

    label: str
    optimizer: str
    lr: float | None
    steps: list[int]
    losses: list[float]
    converged_at: float  # nan: not settled

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def matmul_results(runs: Iterable[Run]) -> list[MatmulResult]:
    """The runs that recorded a time and a throughput, as :class:`MatmulResult`."""
    found = []
    for run in runs:
        metrics, params, tags = names.results(run.data.metrics), run.data.params, run.data.tags
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
    size = _number(params.get("task.size"))
    if size is not None:
        return size
    sides = [_number(params.get(f"task.{key}")) for key in ("m", "k", "n")]
    if any(side is None for side in sides):
        return None
    return math.prod(sides) ** (1 / 3)


def speedups(results: Sequence[MatmulResult]) -> list[Speedup]:
    """CPU time / device time for each device, dtype and size that both have."""
    cpu = _medians(((r.dtype, r.size), r.time_ms) for r in results if r.device == "cpu")
    other = _medians(((r.device, r.dtype, r.size), r.time_ms) for r in results if r.device != "cpu")
    return [
        Speedup(size, dtype, device, cpu[(dtype, size)], ms)
        for (device, dtype, size), ms in sorted(other.items())
        if (dtype, size) in cpu
    ]


def matmul_figure(results: Sequence[MatmulResult]) -> Figure:
    """Time and GFLOP/s against size (log-log), one line per (device, dtype)."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    time_ax, gflops_ax = figure.subplots(1, 2)
    groups = _group(results, lambda r: f"{r.device} {r.dtype}")
    for label, members in groups.items():
        time_ax.plot(*_median_line((r.size, r.time_ms) for r in members), "o-", label=label)
        gflops_ax.plot(*_median_line((r.size, r.gflops) for r in members), "o-", label=label)
    noisy = [r for r in results if r.noisy]
    if noisy:  # drawn over their line: a point to rerun before trusting it
        label = "noisy: rerun (its run's noisy tag says why)"
        for ax, values in (
            (time_ax, [r.time_ms for r in noisy]),
            (gflops_ax, [r.gflops for r in noisy]),
        ):
            ax.plot([r.size for r in noisy], values, "x", color="red", ms=11, mew=2.2, label=label)
    time_ax.set(title="warm time of one product", ylabel="time (ms)")
    gflops_ax.set(title="throughput", ylabel="GFLOP/s")
    for ax in (time_ax, gflops_ax):
        ax.set(xscale="log", yscale="log", xlabel=SIZE_LABEL)
        _ticks_at(ax, [r.size for r in results])
        ax.grid(True, which="both", alpha=0.4)
        ax.legend(fontsize="small")
    return figure


def speedup_figure(rows: Sequence[Speedup]) -> Figure:
    """CPU time / device time against size, one line per (device, dtype); 1 = as fast."""
    figure = Figure(figsize=(7, 4.8), layout="constrained")
    ax = figure.subplots()
    for label, members in _group(rows, lambda r: f"{r.device} {r.dtype}").items():
        ax.plot(*_median_line((r.size, r.ratio) for r in members), "o-", label=label)
    ax.axhline(1.0, color="gray", lw=0.8, label="_as fast as the CPU")
    ax.set(xscale="log", yscale="log", xlabel=SIZE_LABEL, ylabel="speed-up over the CPU (x)")
    _ticks_at(ax, [r.size for r in rows])
    ax.set_title("GPU / CPU speed-up (same dtype and size)")
    ax.grid(True, which="both", alpha=0.4)
    ax.legend(fontsize="small")
    return figure


def minimize_results(client: MlflowClient, runs: Iterable[Run]) -> list[MinimizeResult]:
    """The runs' loss histories (one MLflow call per run), as :class:`MinimizeResult`."""
    found = []
    for run in runs:
        history = {m.step: m.value for m in _loss_history(client, run)}
        if not history:
            continue
        steps = sorted(history)
        losses = [history[step] for step in steps]
        params, tags, metrics = run.data.params, run.data.tags, names.results(run.data.metrics)
        stopped_by_tol = tags.get("stop_reason") == "tol"
        found.append(
            MinimizeResult(
                label=run_label(run),
                optimizer=params.get("optim._target_", "?").rsplit(".", 1)[-1],
                lr=_number(params.get("optim.lr")),
                steps=steps,
                losses=losses,
                converged_at=steps_to_converge(
                    steps, losses, metrics.get("steps_run") if stopped_by_tol else None
                ),
            )
        )
    return found


def _loss_history(client: MlflowClient, run: Run) -> list:
    """The run's loss at every recorded step (under a legacy name in runs recorded before)."""
    key = names.recorded_name(run.data.metrics, names.objective("loss"))
    return client.get_metric_history(run.info.run_id, key) if key is not None else []


def steps_to_converge(
    steps: Sequence[int], losses: Sequence[float], stopped_at: float | None = None
) -> float:
    """When a loss curve converged; see the module's docstring for the definition.

    Args:
        steps: the recorded steps, ascending.
        losses: the loss at each of them.
        stopped_at: ``steps_run`` of a run that ``task.tol`` stopped, else None.

    Returns:
        The step, or nan when the loss had not settled before its last point.
    """
    if stopped_at is not None:
        return float(stopped_at)
    final = losses[-1]
    band = CONVERGED_RTOL * (1 + abs(final))
    settled = len(losses) - 1
    while settled > 0 and abs(losses[settled - 1] - final) <= band:
        settled -= 1
    return math.nan if settled == len(losses) - 1 else float(steps[settled])


def minimize_figure(results: Sequence[MinimizeResult]) -> Figure:
    """Final loss and steps to converge against the learning rate, one line per optimizer."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    loss_ax, steps_ax = figure.subplots(1, 2)
    with_lr = [r for r in results if r.lr is not None and r.lr > 0]
    for optimizer, members in _group(with_lr, lambda r: r.optimizer).items():
        loss_ax.plot(*_median_line((r.lr, r.final_loss) for r in members), "o-", label=optimizer)
        steps_ax.plot(*_median_line((r.lr, r.converged_at) for r in members), "o-", label=optimizer)
    loss_ax.set(title="final loss", ylabel="loss")
    steps_ax.set(title="steps to converge (gap: not settled)", ylabel="step")
    for ax in (loss_ax, steps_ax):
        ax.set(xscale="log", xlabel="learning rate (optim.lr)")
        _ticks_at(ax, [r.lr for r in with_lr])
        ax.grid(True, which="both", alpha=0.4)
        ax.legend(fontsize="small")
    return figure


def loss_curves_figure(results: Sequence[MinimizeResult]) -> Figure:
    """Every run's loss against the step, overlaid, labelled by its overrides."""
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    ax = figure.subplots()
    for result in results:
        ax.plot(result.steps, result.losses, lw=1.2, label=result.label)
    ax.set(xlabel="step", ylabel="loss", title="loss curves", yscale=_loss_scale(results))
    ax.grid(True, which="both", alpha=0.4)
    ax.legend(fontsize="x-small", ncol=max(1, len(results) // 15))
    return figure


def _loss_scale(results: Sequence[MinimizeResult]) -> str:
    """Log when every loss is positive and they span over two decades, else linear."""
    losses = [loss for result in results for loss in result.losses if math.isfinite(loss)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 100:
        return "log"
    return "linear"


def _ticks_at(ax, values: Iterable[float]) -> None:
    """Label the x axis at the swept values (32, 64, ...) rather than at powers of ten."""
    ticks = sorted(set(values))
    if 0 < len(ticks) <= MAX_TICKS:
        ax.set_xticks(ticks, labels=[f"{tick:.4g}" for tick in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def run_label(run: Run) -> str:
    """The run's overrides (what sets it apart in a sweep), else its name."""
    overrides = run.data.tags.get("overrides", "")
    if overrides and overrides != "(none)":
        return overrides
    return run.info.run_name or run.info.run_id


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:  # "null", or not a number
        return None
    return value if value is not None and math.isfinite(value) else None


def _group(items: Iterable, key) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(sorted(groups.items()))


def _medians(pairs: Iterable[tuple]) -> dict:
    values: dict = defaultdict(list)
    for key, value in pairs:
        values[key].append(value)
    return {key: _median(found) for key, found in values.items()}


def _median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def _median_line(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """x ascending, with the median y of the points that share an x."""
    medians = _medians(points)
    xs = sorted(medians)
    return xs, [medians[x] for x in xs]
