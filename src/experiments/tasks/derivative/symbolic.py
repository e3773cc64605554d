"""The check of every autograd value against sympy, at the exact point.

The same expression tree (never its text) becomes a sympy expression, which is
differentiated symbolically and evaluated exactly at the point as the tensors hold it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from experiments.errors import RunFailure
from experiments.tasks.derivative.autograd import Wrt, derivatives_to_compute, metric_name
from experiments.tasks.expressions import Expression

if TYPE_CHECKING:
    import sympy

# A value passes when |autograd - sympy| <= TOLERANCE * max(|sympy|, 1): about 800 float32
# ulps, or 4.5 million float64 ones, room for rounding; a wrong derivative is off by far more.
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


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


def check_agreement(rows: Sequence[Row], point: Mapping[str, float], dtype: str) -> None:
    """Raise :class:`RunFailure` naming the first value sympy disagrees with or cannot give."""
    for row in rows:
        if not math.isfinite(row.exact):
            raise RunFailure(
                f"{row.name} is not finite at {where(point)} according to sympy "
                f"({short(row.at_point)}), "
                f"though autograd gives {row.value:.12g}"
            )
        if row.abs_err > TOLERANCE[dtype] * max(abs(row.exact), 1.0):
            raise RunFailure(
                f"{row.name} disagrees with sympy at {where(point)}: autograd {row.value:.12g}, "
                f"sympy {row.exact:.12g} (|diff| {row.abs_err:.3g} beyond the {dtype} "
                f"tolerance {TOLERANCE[dtype]:g} x max(|sympy|, 1))"
            )


def where(point: Mapping[str, float]) -> str:
    """The point in words: ``x=1, y=2``."""
    return ", ".join(f"{name}={value:.6g}" for name, value in point.items()) or "(no variables)"


def short(expr: sympy.Expr, limit: int = 60) -> str:
    """A formula cut to ``limit`` characters, for one line of a message or a table."""
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."
