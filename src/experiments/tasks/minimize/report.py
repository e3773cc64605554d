"""minimize's own figures in a sweep's report (``Task.report``): final loss and steps to
converge against the learning rate per optimizer, every run's loss curve, and their table.

Steps to converge: a run stopped by ``task.tol`` converged at ``steps_run``; otherwise at
the first recorded step from which the loss stays within ``1e-6 * (1 + |final loss|)`` of
its final value up to the end. A run whose loss only reaches that band at its last point
did not converge (shown as a gap and ``not settled``). Drawn without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from matplotlib.figure import Figure

from experiments import names
from experiments.reporting import aligned, as_number, group, label, median_line, number, ticks_at

CONVERGED_RTOL = 1e-6


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


def figures(runs: Sequence[Any]) -> dict[str, Any]:
    """``minimize.png``, ``minimize_loss_curves.png`` and ``minimize.txt``, from the
    FINISHED runs (``api.ReportRun``)."""
    results = minimize_results(run for run in runs if run.status == "FINISHED")
    if not results:
        return {}
    return {
        "minimize.png": minimize_figure(results),
        "minimize_loss_curves.png": loss_curves_figure(results),
        "minimize.txt": minimize_table(results),
    }


def minimize_results(runs: Iterable[Any]) -> list[MinimizeResult]:
    """The runs' loss histories (one store call per run), as :class:`MinimizeResult`."""
    found = []
    for run in runs:
        key = names.recorded_name(run.metrics, names.objective("loss"))  # a legacy name too
        history = dict(run.history(key)) if key is not None else {}
        if not history:
            continue
        steps = sorted(history)
        losses = [history[step] for step in steps]
        metrics = names.results(run.metrics)
        stopped_by_tol = run.tags.get("stop_reason") == "tol"
        found.append(
            MinimizeResult(
                label=label(run),
                optimizer=run.params.get("optim._target_", "?").rsplit(".", 1)[-1],
                lr=as_number(run.params.get("optim.lr")),
                steps=steps,
                losses=losses,
                converged_at=steps_to_converge(
                    steps, losses, metrics.get("steps_run") if stopped_by_tol else None
                ),
            )
        )
    return found


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
    for optimizer, members in group(with_lr, lambda r: r.optimizer).items():
        loss_ax.plot(*median_line((r.lr, r.final_loss) for r in members), "o-", label=optimizer)
        steps_ax.plot(*median_line((r.lr, r.converged_at) for r in members), "o-", label=optimizer)
    loss_ax.set(title="final loss", ylabel="loss")
    steps_ax.set(title="steps to converge (gap: not settled)", ylabel="step")
    for ax in (loss_ax, steps_ax):
        ax.set(xscale="log", xlabel="learning rate (optim.lr)")
        ticks_at(ax, [r.lr for r in with_lr])
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


def minimize_table(results: Sequence[MinimizeResult]) -> str:
    """Per run: optimizer, learning rate, final loss and steps to converge."""
    rows = [("run", "optimizer", "lr", "final loss", "steps to converge")]
    for r in results:
        converged = "not settled" if math.isnan(r.converged_at) else f"{r.converged_at:g}"
        rows.append((r.label, r.optimizer, number(r.lr), number(r.final_loss), converged))
    return aligned(rows)


def _loss_scale(results: Sequence[MinimizeResult]) -> str:
    """Log when every loss is positive and they span over two decades, else linear."""
    losses = [loss for result in results for loss in result.losses if math.isfinite(loss)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 100:
        return "log"
    return "linear"
