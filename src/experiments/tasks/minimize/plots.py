"""Figures for the tasks, drawn with matplotlib's object API (no global pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

Function = Callable[[dict[str, np.ndarray]], np.ndarray]


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG and return its path."""
    figure.savefig(path, dpi=90)
    return path


def curve_with_path(
    f: Function, name: str, path: Sequence[float], values: Sequence[float], title: str
) -> Figure:
    """The tutorial's figure: f over an interval, the iterates, and the final point marked.

    Args:
        f: evaluates the function on ``{name: array}``.
        name: the variable's name.
        path: the variable's value at each recorded step.
        values: f at each recorded step.
        title: the figure's title (the expression).
    """
    lo, hi = _span(path)
    grid = np.linspace(lo, hi, 400)
    figure = Figure(figsize=(9, 6), facecolor="azure")
    ax = figure.subplots()
    ax.plot(grid, f({name: grid}), label=f"f({name})")
    ax.plot(path, values, _style(path), ms=4, alpha=0.6, label="iterates")
    ax.plot(
        path[-1], values[-1], marker="^", ms=16, ls="none", label=f"final {name}={path[-1]:.4f}"
    )
    ax.set(xlabel=name, ylabel="f")
    _title(ax, title)
    ax.grid(True)
    ax.legend()
    return figure


def contour_with_path(f: Function, names: Sequence[str], path: np.ndarray, title: str) -> Figure:
    """Contours of f over two variables with the path of the iterates.

    Args:
        f: evaluates the function on ``{name: array}``.
        names: the two variables, x axis first.
        path: array of shape (steps, 2).
        title: the figure's title.
    """
    (x_lo, x_hi), (y_lo, y_hi) = _span(path[:, 0]), _span(path[:, 1])
    xs, ys = np.meshgrid(np.linspace(x_lo, x_hi, 200), np.linspace(y_lo, y_hi, 200))
    zs = f({names[0]: xs, names[1]: ys})
    figure = Figure(figsize=(8, 6.5))
    ax = figure.subplots()
    finite = zs[np.isfinite(zs)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 1e3:
        # Banana-shaped valleys (Rosenbrock) only show on a logarithmic scale.
        levels = np.geomspace(finite.min(), finite.max(), 30)
        contours = ax.contour(xs, ys, zs, levels=levels, norm=LogNorm(), cmap="viridis")
    else:
        contours = ax.contour(xs, ys, zs, levels=30, cmap="viridis")
    figure.colorbar(contours, ax=ax, label="f")
    ax.plot(path[:, 0], path[:, 1], _style(path), color="tab:red", ms=3, lw=1, label="iterates")
    ax.plot(*path[0], marker="s", color="black", ls="none", label="start")
    ax.plot(*path[-1], marker="^", ms=14, color="tab:red", ls="none", label="final")
    ax.set(xlabel=names[0], ylabel=names[1])
    _title(ax, title)
    ax.legend()
    return figure


def loss_curve(steps: Sequence[int], loss: Sequence[float], grad_norm: Sequence[float]) -> Figure:
    """Loss and gradient norm against the step."""
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    left.plot(steps, loss, _style(steps), ms=3)
    left.set(xlabel="step", ylabel="loss")
    _title(left, "loss")
    left.grid(True)
    norms = np.asarray(grad_norm, dtype=float)
    right.plot(steps, np.where(norms > 0, norms, np.nan), _style(steps), ms=3, color="tab:orange")
    right.set(xlabel="step", ylabel="|grad|", yscale="log")
    # Plain "1e-06" labels: the default 10^x labels go through mathtext, slow to lay out.
    right.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    # No minor ticks: over many decades they are most of what this figure costs to draw.
    right.yaxis.set_minor_locator(NullLocator())
    _title(right, "gradient norm")
    right.grid(True)
    figure.subplots_adjust(wspace=0.3)  # a fixed layout: tight_layout costs a second render
    return figure


def _style(points: Sequence) -> str:
    # A marker per point shows the steps of a short run; on a long one it is a smear that
    # costs more to draw than everything else.
    return "o-" if len(points) <= 100 else "-"


def _title(ax: Axes, text: str) -> None:
    # A title at a fixed height: left to itself, matplotlib measures every tick label to
    # place it, which is about half the cost of drawing these small figures.
    ax.set_title(text, y=1.01)


def _span(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    margin = max(0.25 * (hi - lo), 1.0)
    return lo - margin, hi + margin
