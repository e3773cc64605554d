"""What the runner hands to a task besides the task's own config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.recording import Recorder


@dataclass
class TaskContext:
    """What the runner hands to a task besides the task's own config.

    Attributes:
        device: the resolved device to run on.
        recorder: where params, metrics, tags and figures go.
        optim: the composed ``optim`` config node; build it with
            ``experiments.optimizers.build(ctx.optim)``.
        seed: the seed torch was seeded with.
        output_dir: the run's own directory (Hydra's output directory), for local files.
        log_every: record per-step metrics every this many steps (and the last step).
    """

    device: torch.device
    recorder: Recorder
    optim: Any
    seed: int
    output_dir: Path
    log_every: int = 1
