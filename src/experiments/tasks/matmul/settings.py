"""The settings of ``task=matmul`` (``conf/task/matmul.yaml`` extends them).

Imports no torch (see ``experiments.tasks.minimize.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from experiments.config import check_choice, check_positive, check_positive_int
from experiments.errors import ConfigError

DTYPES = ("float32", "float64", "float16", "bfloat16")  # timing.DTYPES's names


@dataclass
class MatmulConfig:
    """Settings of ``task=matmul``; see ``conf/task/matmul.yaml``."""

    name: str = "matmul"
    size: Optional[int] = None
    m: int = 512
    k: int = 1024
    n: int = 512
    dtype: str = "float32"
    threads: Optional[int] = None
    warmup: int = 3
    min_run_time_s: float = 1.0

    def __post_init__(self) -> None:
        if self.size is not None:
            check_positive_int("task.size", self.size)
        for key in ("m", "k", "n"):
            check_positive_int(f"task.{key}", getattr(self, key))
        check_choice("task.dtype", self.dtype, DTYPES)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(
                f"task.threads must be a positive integer or null (all cores), got {self.threads!r}"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"task.warmup must be a non-negative integer, got {self.warmup!r}")
        check_positive("task.min_run_time_s", self.min_run_time_s)

    def shape(self) -> tuple[int, int, int]:
        """``(m, k, n)`` of the product: ``size`` thrice when it is set."""
        if self.size is not None:
            return self.size, self.size, self.size
        return self.m, self.k, self.n

    def threads_used(self) -> int:
        """``threads``, or every core when it is null."""
        from experiments.tasks.matmul.timing import default_threads  # torch: the run's

        return default_threads() if self.threads is None else self.threads
