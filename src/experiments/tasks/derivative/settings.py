"""The settings of ``task=derivative`` (``conf/task/derivative.yaml`` extends them).

Imports no torch (see ``experiments.tasks.minimize.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from experiments.config import (
    check_choice,
    check_number_mapping,
    check_positive_int,
    open_mapping,
)
from experiments.errors import ConfigError

DTYPES = ("float32", "float64")
# Both autograd's graph and sympy's formulas swell with the order: each step up costs about
# 4x; sigmoid(tanh(x)*y)/(1 + x**2) takes 8 s at order 8 and 50 s at order 10.
MAX_ORDER = 8


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
        from experiments.tasks.expressions import check_expression  # torch: the run's

        check_expression(self.expr, self.at, "task.at")
