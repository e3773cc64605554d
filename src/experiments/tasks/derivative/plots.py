"""The derivative task's figures: f with its tangent and derivatives, or f's contours with
the gradient, drawn with matplotlib's object API."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from experiments.tasks.derivative.autograd import grad, metric_name
from experiments.tasks.expressions import Expression


def _half_width(*coordinates: float) -> float:
    # Wide enough to show the shape around the point; x**2 at 5 shows its minimum at 0.
    return max(2.0, *(abs(c) for c in coordinates))


def curve_with_tangent(
    expression: Expression, name: str, at: float, values: dict[str, float], order: int
) -> Figure:
    """f with its tangent at the point (top) and f's derivatives over the same interval (below)."""
    half = _half_width(at)
    grid = torch.linspace(at - half, at + half, 401, dtype=torch.float64, requires_grad=True)
    curves = [expression.evaluate({name: grid}).expand_as(grid)]
    for _ in range(order):
        (next_,) = grad(curves[-1].sum(), [grid], create_graph=True)
        curves.append(next_.expand_as(grid))
    xs = grid.detach().numpy()
    # Where f itself is undefined (log(x) for x < 0) autograd's formulas still give numbers.
    arrays = [curve.detach().numpy() for curve in curves]
    ys = [np.where(np.isfinite(arrays[0]) & np.isfinite(a), a, np.nan) for a in arrays]
    slope = values[metric_name((name,))]

    figure = Figure(figsize=(9, 8), facecolor="azure")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(xs, ys[0], label=f"f({name}) = {expression.text}")
    top.plot(xs, values["f"] + slope * (xs - at), "--", label=f"tangent, slope {slope:.6g}")
    top.plot(at, values["f"], marker="o", ms=9, ls="none", label=f"f({at:.6g}) = {values['f']:.6g}")
    _robust_ylim(top, [ys[0]], [values["f"]])
    top.set(ylabel="f", title=f"{expression.text} at {name}={at:.6g}")
    for n, curve in enumerate(ys[1:], start=1):
        label = metric_name((name,) * n)
        line = bottom.plot(xs, curve, label=f"{label} = {values[label]:.6g} at the point")[0]
        bottom.plot(at, values[label], marker="o", color=line.get_color(), ls="none")
    _robust_ylim(bottom, ys[1:], [values[metric_name((name,) * n)] for n in range(1, order + 1)])
    bottom.axvline(at, color="gray", lw=0.8)
    bottom.set(xlabel=name, ylabel="derivatives")
    for ax in (top, bottom):
        ax.grid(True)
        ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _robust_ylim(ax, curves: Sequence[np.ndarray], marked: Sequence[float]) -> None:
    """Limits from the bulk of the curves, so a pole (1/x near 0) does not flatten the rest."""
    finite = np.concatenate([c[np.isfinite(c)] for c in curves] + [np.asarray(marked, dtype=float)])
    if finite.size == 0:
        return
    lo, hi = np.percentile(finite, [2, 98])
    if finite.max() - finite.min() <= 3 * (hi - lo):  # no pole: show everything
        lo, hi = finite.min(), finite.max()
    lo, hi = min(lo, *marked), max(hi, *marked)
    margin = 0.08 * (hi - lo) or 1.0
    ax.set_ylim(lo - margin, hi + margin)


def contour_with_gradient(
    expression: Expression, names: Sequence[str], point: dict[str, float], values: dict[str, float]
) -> Figure:
    """Contours of f around the point, with the gradient drawn as an arrow from it."""
    (x_name, y_name), (a, b) = names, (point[names[0]], point[names[1]])
    half = _half_width(a, b)  # the same on both axes: the arrow is then normal to the contours
    xs, ys = np.meshgrid(np.linspace(a - half, a + half, 201), np.linspace(b - half, b + half, 201))
    with torch.no_grad():
        zs = expression.evaluate({x_name: torch.from_numpy(xs), y_name: torch.from_numpy(ys)})
    zs = np.ma.masked_invalid(np.broadcast_to(zs.numpy(), xs.shape))

    figure = Figure(figsize=(8, 7))
    ax = figure.subplots()
    finite = zs.compressed()
    if finite.size and finite.max() > finite.min():
        if finite.min() > 0 and finite.max() / finite.min() > 1e3:
            # Banana-shaped valleys (Rosenbrock) only show on a logarithmic scale.
            levels = np.geomspace(finite.min(), finite.max(), 30)
            contours = ax.contour(xs, ys, zs, levels=levels, norm=LogNorm(), cmap="viridis")
        else:
            contours = ax.contour(xs, ys, zs, levels=30, cmap="viridis")
        figure.colorbar(contours, ax=ax, label="f")
    gradient = np.array([values[metric_name((x_name,))], values[metric_name((y_name,))]])
    norm = float(np.linalg.norm(gradient))
    ax.plot(a, b, marker="o", color="tab:red", ms=8, ls="none", label=f"({a:.6g}, {b:.6g})")
    if norm > 0:
        tip = np.array([a, b]) + 0.35 * half * gradient / norm  # direction only; |grad| in label
        ax.annotate(
            "",
            xy=tuple(tip),
            xytext=(a, b),
            arrowprops={"arrowstyle": "-|>", "color": "tab:red", "lw": 2},
        )
    ax.plot([], [], color="tab:red", label=f"gradient ({gradient[0]:.6g}, {gradient[1]:.6g})")
    ax.set_aspect("equal")
    ax.set(xlabel=x_name, ylabel=y_name, title=f"{expression.text}")
    ax.legend(fontsize="small", loc="upper right")
    return figure
