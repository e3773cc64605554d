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
from typing import Mapping, Sequence

import torch

from experiments.errors import ConfigError, RunFailure
from experiments.names import SYMPY, objective, result
from experiments.tasks.context import TaskContext
from experiments.tasks.derivative.autograd import compute, held_point
from experiments.tasks.derivative.plots import contour_with_gradient, curve_with_tangent
from experiments.tasks.derivative.settings import DerivativeConfig
from experiments.tasks.derivative.symbolic import (
    TOLERANCE,
    Row,
    against_sympy,
    check_agreement,
    short,
    where,
)
from experiments.tasks.expressions import Expression, parse

log = logging.getLogger(__name__)

F = objective("f")  # the objective run() returns: f at the point


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
        ctx.recorder.log_metrics({k: v for k, v in _named(values).items() if math.isfinite(v)})
        raise

    started = time.perf_counter()
    rows = against_sympy(expression, point, values, cfg.order)
    ctx.recorder.log_metrics({"time/sympy_s": time.perf_counter() - started})
    checked = [row for row in rows if math.isfinite(row.exact)]
    ctx.recorder.log_metrics(_named(values))
    ctx.recorder.log_metrics(
        {
            SYMPY + "max_abs_err": max((row.abs_err for row in checked), default=0.0),
            SYMPY + "max_rel_err": max((row.rel_err for row in checked), default=0.0),
        }
    )
    ctx.recorder.log_text(table(expression, point, rows, cfg.dtype, ctx.device), "derivatives.txt")
    check_agreement(rows, point, cfg.dtype)

    started = time.perf_counter()
    _plot(expression, point, values, cfg.order, ctx)
    ctx.recorder.log_metrics({"time/plot_s": time.perf_counter() - started})
    log.info("derivative: %s at %s: %s", expression.text, where(point), _summary(rows))
    return values["f"]


def _named(values: Mapping[str, float]) -> dict[str, float]:
    """The metrics of f and its derivatives: f is the objective, the others results."""
    return {(F if name == "f" else result(name)): value for name, value in values.items()}


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
        raise RunFailure(f"{bad[0]} is not finite at {where(point)}: {shown}")


def table(
    expression: Expression,
    point: Mapping[str, float],
    rows: Sequence[Row],
    dtype: str,
    device: torch.device | str,
) -> str:
    """The results as a fixed-width text table, one row per quantity."""
    lines = [
        f"{expression.text} at {where(point)} ({dtype} on {device})",
        f"checked against sympy: |autograd - sympy| <= {TOLERANCE[dtype]:g} x max(|sympy|, 1)",
        "",
        f"{'quantity':<14} {'autograd':>20} {'sympy':>20} {'abs err':>9}  symbolic",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<14} {row.value:>20.12g} {row.exact:>20.12g} {row.abs_err:>9.2g}  "
            f"{short(row.symbolic)}"
        )
    return "\n".join(lines) + "\n"


def _summary(rows: Sequence[Row], shown: int = 6) -> str:
    values = ", ".join(f"{row.name}={row.value:.6g}" for row in rows[:shown])
    more = f", ... ({len(rows) - shown} more in derivatives.txt)" if len(rows) > shown else ""
    worst = max(row.abs_err for row in rows)
    return f"{values}{more}; sympy agrees (max abs err {worst:.2g})"


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
