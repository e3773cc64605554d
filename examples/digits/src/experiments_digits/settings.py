"""The settings of ``task=digits`` (``conf/task/digits.yaml`` extends them): ``task.*``.

Each value is checked where it is set, so ``task.hidden=0`` stops in one line before any run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.errors import ConfigError


@dataclass
class DigitsSettings:
    """A multilayer perceptron on the 8x8 digits: its size, its training, its split."""

    hidden: int = 64  # units of each hidden layer
    layers: int = 1  # hidden layers
    dropout: float = 0.0  # between layers, while training
    epochs: int = 30
    batch_size: int = 64
    val_fraction: float = 0.2  # held out for validation, drawn by the run's seed

    def __post_init__(self) -> None:
        for key in ("hidden", "layers", "epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task.{key} must be a positive integer, got {value!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"task.dropout must be in [0, 1), got {self.dropout!r}")
        valid = isinstance(self.val_fraction, (int, float)) and math.isfinite(self.val_fraction)
        if not (valid and 0.05 <= self.val_fraction <= 0.5):
            raise ConfigError(
                f"task.val_fraction must be between 0.05 and 0.5, got {self.val_fraction!r}"
            )
