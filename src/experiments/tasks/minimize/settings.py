"""The settings of ``task=minimize`` (``conf/task/minimize.yaml`` extends them).

Imports no torch: the task's registration (``experiments.tasks.minimize``) is read by every
part, the report's process included; the expression is checked (with torch) when the
settings are built, in the run's process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from experiments.config import (
    check_choice,
    check_number_mapping,
    check_positive,
    check_positive_int,
    open_mapping,
)
from experiments.errors import ConfigError

DTYPES = ("float32", "float64")
MAX_STEPS = 10_000_000


@dataclass
class MinimizeConfig:
    """Settings of ``task=minimize``; see ``conf/task/minimize.yaml``."""

    name: str = "minimize"
    expr: str = "3*x**2 + 6*x - 9"
    init: Dict[str, float] = field(default_factory=lambda: open_mapping({"x": 10.0}))
    steps: int = 20
    tol: Optional[float] = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_positive_int("task.steps", self.steps)
        if self.steps > MAX_STEPS:
            raise ConfigError(f"task.steps must be at most {MAX_STEPS:,}, got {self.steps}")
        if self.tol is not None:
            check_positive("task.tol", self.tol)
        check_choice("task.dtype", self.dtype, DTYPES)
        self.init = check_number_mapping("task.init", dict(self.init))
        from experiments.tasks.expressions import check_expression  # torch: the run's

        check_expression(self.expr, self.init, "task.init")
