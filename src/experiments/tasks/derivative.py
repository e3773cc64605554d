"""Derivatives of an expression at a point, with autograd (the tutorial's 自動微分 section).

Defaults reproduce the tutorial: ``x**2`` at x = 5 gives df/dx = 10 and d2f/dx2 = 2; with
``task.expr="x**2*y + 3*x*y**5 + x**3"`` at x = y = 1, df/dx = 8 and df/dy = 16. The task
computes f, every first and second partial derivative (each mixed pair once) and, for
``order`` > 2, the pure higher derivatives of each variable, with
``torch.autograd.grad(..., create_graph=True)``. Every value is checked against sympy: the
same expression tree is differentiated symbolically and evaluated exactly at the point.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Mapping, Sequence

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from experiments.config import (
    check_choice,
    check_expression,
    check_number_mapping,
    check_positive_int,
    open_mapping,
)
from experiments.context import TaskContext
from experiments.errors import ConfigError, RunFailure
from experiments.expressions import Expression, parse
from experiments.names import result

if TYPE_CHECKING:
    import sympy

log = logging.getLogger(__name__)

DTYPES = ("float32", "float64")
# Both autograd's graph and sympy's formulas swell with the order: each step up costs about
# 4x; sigmoid(tanh(x)*y)/(1 + x**2) takes 8 s at order 8 and 50 s at order 10.
MAX_ORDER = 8
# A value passes when |autograd - sympy| <= TOLERANCE * max(|sympy|, 1): about 800 float32
# ulps, or 4.5 million float64 ones, room for rounding; a wrong derivative is off by far more.
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}

Wrt = tuple[str, ...]
"""The variables a derivative is taken by, in order: ``()`` is f, ``("x", "y")`` d2f/dxdy."""


@dataclass
class DerivativeConfig:
    """Settings of ``task=derivative``; see ``conf/task/derivative.yaml``."""

    name: str = "derivative"
    expr: str = "x**2"
    at: Dict[str, float] = field(default_factory=lambda: open_mapping({"x": 5.0}))
    order: int = 2
    dtype: str = "float64"

    def __post_init__(self) -> None:
        check_positive_int("task.order", self.order)
        if self.order > MAX_ORDER:
            raise ConfigError(f"task.order must be at most {MAX_ORDER}, got {self.order}")
        check_choice("task.dtype", self.dtype, DTYPES)
        self.at = check_number_mapping("task.at", dict(self.at))
        check_expression(self.expr, self.at, "task.at")


SCHEMA = DerivativeConfig
OBJECTIVE = result("f")  # the metric run() returns: f at the point


@dataclass
class Row:
    """One computed quantity and its symbolic check."""

    name: str
    value: float  # autograd's
    symbolic: sympy.Expr  # sympy's derivative
    at_point: sympy.Expr  # ... at the exact point, before evalf
    exact: float = field(init=False)  # ... as a float; nan where undefined or complex

    def __post_init__(self) -> None:
        self.exact = _to_float(self.at_point)

    @property
    def abs_err(self) -> float:
        return abs(self.value - self.exact)

    @property
    def rel_err(self) -> float:
        """Relative to sympy's value; 0 where that is exactly 0 (``abs_err`` covers those)."""
        return self.abs_err / abs(self.exact) if self.exact != 0 else 0.0


def metric_name(wrt: Wrt) -> str:
    """The metric's name: ``f``, ``df_dx``, ``d2f_dxdy`` for ``("x", "y")``, ``d3f_dx3`` ..."""
    if not wrt:
        return "f"
    if len(wrt) == 1:
        return f"df_d{wrt[0]}"
    if len(set(wrt)) == 1:
        return f"d{len(wrt)}f_d{wrt[0]}{len(wrt)}"
    return f"d{len(wrt)}f_" + "".join(f"d{name}" for name in wrt)


def derivatives_to_compute(names: Sequence[str], order: int) -> list[Wrt]:
    """f, the gradient, the Hessian's upper triangle (order >= 2), then pure n-th derivatives.

    Every entry's prefix comes before it, so each can be derived from an earlier one.
    """
    wanted: list[Wrt] = [(), *((name,) for name in names)]
    if order >= 2:
        wanted += [(a, b) for i, a in enumerate(names) for b in names[i:]]
    wanted += [(name,) * n for n in range(3, order + 1) for name in names]
    return wanted


def held_point(point: Mapping[str, float], dtype: torch.dtype) -> dict[str, float]:
    """The point as a tensor of ``dtype`` holds it (float32 rounds 1.2), so sympy sees the same."""
    return {name: torch.tensor(value, dtype=dtype).item() for name, value in point.items()}


def compute(
    expression: Expression,
    point: Mapping[str, float],
    order: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """f and its derivatives at ``point`` with autograd.

    Args:
        expression: the parsed function.
        point: a value for each variable to differentiate by, in the order of the results.
        order: 1 for the gradient; 2 adds the Hessian; n > 2 adds pure derivatives up to n.
        dtype: the tensors' dtype.
        device: where to compute.

    Returns:
        Metric name (``f``, ``df_dx``, ``d2f_dxdy``, ...) -> value, in
        :func:`derivatives_to_compute` order.
    """
    leaves = {
        name: torch.tensor(value, dtype=dtype, device=device, requires_grad=True)
        for name, value in point.items()
    }
    # With no variables, the expression takes its dtype and device from any tensor passed.
    like = {} if leaves else {"": torch.zeros((), dtype=dtype, device=device)}
    f = expression.evaluate({**leaves, **like})
    tensors = _autograd(f, leaves, order)
    # One transfer for all values: a single synchronisation on a GPU.
    values = torch.stack([tensor.detach() for tensor in tensors.values()]).tolist()
    return {metric_name(wrt): value for wrt, value in zip(tensors, values)}


def _autograd(
    f: torch.Tensor, leaves: dict[str, torch.Tensor], order: int
) -> dict[Wrt, torch.Tensor]:
    names = list(leaves)
    found: dict[Wrt, torch.Tensor] = {(): f}
    if not names:
        return found
    gradient = _grad(f, list(leaves.values()), create_graph=order >= 2)
    found.update({(name,): value for name, value in zip(names, gradient)})
    if order >= 2:
        for i, a in enumerate(names):
            row = _grad(found[(a,)], [leaves[b] for b in names[i:]], create_graph=order >= 3)
            found.update({(a, b): value for b, value in zip(names[i:], row)})
    for n in range(3, order + 1):
        for name in names:
            (found[(name,) * n],) = _grad(
                found[(name,) * (n - 1)], [leaves[name]], create_graph=n < order
            )
    return found


def _grad(
    output: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool
) -> list[torch.Tensor]:
    """``torch.autograd.grad``, with 0 where ``output`` does not depend on an input."""
    if not output.requires_grad:  # e.g. the derivative of a linear term is a constant
        return [torch.zeros_like(leaf) for leaf in inputs]
    # retain_graph: the partials of one order share the graph the next order differentiates.
    grads = torch.autograd.grad(
        output, inputs, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, inputs)]


def against_sympy(
    expression: Expression, point: Mapping[str, float], values: Mapping[str, float], order: int
) -> list[Row]:
    """Pair each autograd value with sympy's derivative at the exact rationals of ``point``.

    The sympy expression is built from the parsed tree, never from the text; each
    derivative is taken from the one before it, as autograd does.

    Args:
        expression: the parsed function.
        point: the point as the tensors held it (see :func:`held_point`).
        values: :func:`compute`'s results for ``point`` and ``order``.
        order: the order they were computed to.

    Returns:
        One :class:`Row` per value, in the same order.
    """
    import sympy  # most of a second to import: only this check needs it

    symbols = {name: sympy.Symbol(name, real=True) for name in point}
    exact_point = {symbols[name]: sympy.Rational(value) for name, value in point.items()}
    found: dict[Wrt, sympy.Expr] = {}
    rows = []
    for wrt in derivatives_to_compute(list(point), order):
        found[wrt] = (
            sympy.diff(found[wrt[:-1]], symbols[wrt[-1]]) if wrt else expression.to_sympy(symbols)
        )
        name = metric_name(wrt)
        rows.append(Row(name, values[name], found[wrt], found[wrt].subs(exact_point)))
    return rows


def _to_float(value: sympy.Expr) -> float:
    try:
        number = complex(value.evalf(30))
    except (TypeError, ValueError, OverflowError):  # e.g. DiracDelta(0): not a number
        return math.nan
    if abs(number.imag) > 1e-12 * max(1.0, abs(number.real)):
        return math.nan  # complex: not a derivative of a real function
    return number.real


def run(cfg: DerivativeConfig, ctx: TaskContext) -> float:
    """Differentiate ``cfg.expr`` at ``cfg.at``, check against sympy, record; return f."""
    expression = parse(cfg.expr)
    dtype = getattr(torch, cfg.dtype)
    if ctx.device.type == "mps" and dtype == torch.float64:
        raise ConfigError(
            "task.dtype=float64 is not supported on device=mps; use task.dtype=float32"
        )
    point = held_point(_variables(expression, cfg.at), dtype)

    started = time.perf_counter()
    values = compute(expression, point, cfg.order, dtype, ctx.device)
    ctx.recorder.log_metrics({"time/autograd_s": time.perf_counter() - started})
    try:
        check_finite(values, point)
    except RunFailure:
        ctx.recorder.log_metrics({result(k): v for k, v in values.items() if math.isfinite(v)})
        raise

    started = time.perf_counter()
    rows = against_sympy(expression, point, values, cfg.order)
    ctx.recorder.log_metrics({"time/sympy_s": time.perf_counter() - started})
    checked = [row for row in rows if math.isfinite(row.exact)]
    ctx.recorder.log_metrics({result(k): v for k, v in values.items()})
    ctx.recorder.log_metrics(
        {
            "check/max_abs_err": max((row.abs_err for row in checked), default=0.0),
            "check/max_rel_err": max((row.rel_err for row in checked), default=0.0),
        }
    )
    ctx.recorder.log_text(table(expression, point, rows, cfg.dtype, ctx.device), "derivatives.txt")
    check_agreement(rows, point, cfg.dtype)

    started = time.perf_counter()
    _plot(expression, point, values, cfg.order, ctx)
    ctx.recorder.log_metrics({"time/plot_s": time.perf_counter() - started})
    log.info("derivative: %s at %s: %s", expression.text, _where(point), _summary(rows))
    return values["f"]


def _variables(expression: Expression, at: Mapping[str, float]) -> dict[str, float]:
    """The variables to differentiate by: ``task.at``'s keys that the expression uses."""
    unused = [name for name in at if name not in expression.variables]
    if unused:
        log.warning(
            "task.at sets %s, which task.expr %r does not use; ignored",
            ", ".join(unused),
            expression.text,
        )
    return {name: value for name, value in at.items() if name in expression.variables}


def check_finite(values: Mapping[str, float], point: Mapping[str, float]) -> None:
    """Raise :class:`RunFailure` naming the first quantity that is inf or nan at the point."""
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        shown = ", ".join(f"{name}={values[name]}" for name in bad)
        raise RunFailure(f"{bad[0]} is not finite at {_where(point)}: {shown}")


def check_agreement(rows: Sequence[Row], point: Mapping[str, float], dtype: str) -> None:
    """Raise :class:`RunFailure` naming the first value sympy disagrees with or cannot give."""
    for row in rows:
        if not math.isfinite(row.exact):
            raise RunFailure(
                f"{row.name} is not finite at {_where(point)} according to sympy "
                f"({_short(row.at_point)}), "
                f"though autograd gives {row.value:.12g}"
            )
        if row.abs_err > TOLERANCE[dtype] * max(abs(row.exact), 1.0):
            raise RunFailure(
                f"{row.name} disagrees with sympy at {_where(point)}: autograd {row.value:.12g}, "
                f"sympy {row.exact:.12g} (|diff| {row.abs_err:.3g} beyond the {dtype} "
                f"tolerance {TOLERANCE[dtype]:g} x max(|sympy|, 1))"
            )


def table(
    expression: Expression,
    point: Mapping[str, float],
    rows: Sequence[Row],
    dtype: str,
    device: torch.device | str,
) -> str:
    """The results as a fixed-width text table, one row per quantity."""
    lines = [
        f"{expression.text} at {_where(point)} ({dtype} on {device})",
        f"checked against sympy: |autograd - sympy| <= {TOLERANCE[dtype]:g} x max(|sympy|, 1)",
        "",
        f"{'quantity':<14} {'autograd':>20} {'sympy':>20} {'abs err':>9}  symbolic",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<14} {row.value:>20.12g} {row.exact:>20.12g} {row.abs_err:>9.2g}  "
            f"{_short(row.symbolic)}"
        )
    return "\n".join(lines) + "\n"


def _summary(rows: Sequence[Row], shown: int = 6) -> str:
    values = ", ".join(f"{row.name}={row.value:.6g}" for row in rows[:shown])
    more = f", ... ({len(rows) - shown} more in derivatives.txt)" if len(rows) > shown else ""
    worst = max(row.abs_err for row in rows)
    return f"{values}{more}; sympy agrees (max abs err {worst:.2g})"


def _where(point: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={value:.6g}" for name, value in point.items()) or "(no variables)"


def _short(expr: sympy.Expr, limit: int = 60) -> str:
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plot(
    expression: Expression,
    point: dict[str, float],
    values: dict[str, float],
    order: int,
    ctx: TaskContext,
) -> None:
    names = list(point)
    if len(names) == 1:
        figure = curve_with_tangent(expression, names[0], point[names[0]], values, order)
        ctx.recorder.log_figure(figure, "function.png")
    elif len(names) == 2:
        figure = contour_with_gradient(expression, names, point, values)
        ctx.recorder.log_figure(figure, "contour.png")


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
        (next_,) = _grad(curves[-1].sum(), [grid], create_graph=True)
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
