"""Packages of the tests' own that register tasks, as an installed package does.

:func:`install` writes a package and its ``<name>.dist-info`` (METADATA, ``entry_points.txt``
and, for an editable install, PEP 610's ``direct_url.json``) into a directory: on
``sys.path`` (or ``PYTHONPATH``), it is a distribution as ``pip`` leaves one, found by
``importlib.metadata`` like any other. Nothing is mocked: the registry reads the real
metadata, Hydra finds the real YAML, the runner imports the real module.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Mapping, Optional

# A task of the tests' own: a few steps of a noisy score, drawn with the run's generator,
# numpy and random (all seeded from ``seed``), that writes down what its context said.
SHAPES_INIT = '''
"""task=shapes: the tests' own task (tests/outside.py)."""
from dataclasses import dataclass

from experiments.api import Task, Tolerance
from experiments.errors import ConfigError


@dataclass
class ShapesSettings:
    steps: int = 5
    side: float = 2.0
    stop_at: int = -1  # sends its own process SIGTERM at this step (-1: never)
    check_stop: bool = True  # looks at ctx.stop_requested at each step's end

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"task.steps must be a positive integer, got {self.steps}")


TASK = Task(
    name="shapes",
    settings=ShapesSettings,
    run="shapes_task.work:run",
    objective="score",
    direction="maximize",
    verdict=Tolerance(rel=1e-9),
    report="shapes_task.report:figures",
    table=("area",),
)
NOT_A_TASK = {"name": "shapes"}
'''

SHAPES_WORK = '''
"""The work of task=shapes."""
import json
import os
import random
import signal
import time

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter


class Sides(Formatter):
    """A formatter of this package's own: the figure cannot be drawn where it is not loaded."""

    def __call__(self, x, pos=None):
        return f"{x:g} sides"


def run(cfg, ctx):
    drawn = {
        "generator": float(torch.rand(1, generator=ctx.generator)),
        "torch": float(torch.rand(1)),
        "numpy": float(np.random.rand()),
        "random": random.random(),
    }
    score = 0.0
    for step in range(cfg.steps):
        if step == cfg.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # its handler runs here
        score = cfg.side * (step + 1) + drawn["generator"]
        ctx.recorder.log_metrics({"objective/score": score, "result/area": cfg.side**2}, step=step)
        ctx.recorder.report(score, step)
        if cfg.check_stop and ctx.stop_requested:
            (ctx.output_dir / "stopped.json").write_text(json.dumps({"after_step": step}))
            ctx.stop()
    figure = Figure()
    ax = figure.subplots()
    ax.plot([3, 4, 5], [1, 2, 3])
    ax.xaxis.set_major_formatter(Sides())
    ctx.recorder.log_figure(figure, "sides.png")
    seen = {"run_id": ctx.run_id, "seed": ctx.seed, "output_dir": str(ctx.output_dir), **drawn}
    (ctx.output_dir / "context.json").write_text(json.dumps(seen))
    return score
'''

SHAPES_REPORT = '''
"""task=shapes's own report: a table of the side of each run."""


def figures(runs):
    rows = [f"{run.name}: side {run.params.get('task.side')}" for run in runs]
    return {"shapes.txt": "\\n".join(rows)}
'''

SHAPES_YAML = """\
# python -m experiments task=shapes
defaults:
  - /shapes_schema@_here_
  - _self_

steps: 5
side: 2.0
"""

SHAPES = {
    "shapes_task/__init__.py": SHAPES_INIT,
    "shapes_task/work.py": SHAPES_WORK,
    "shapes_task/report.py": SHAPES_REPORT,
    "shapes_task/conf/task/shapes.yaml": SHAPES_YAML,
}


def install(
    site: Path,
    distribution: str,
    files: Mapping[str, str],
    tasks: Mapping[str, str],
    editable: Optional[Path] = None,
) -> Path:
    """Write a package's ``files`` and its dist-info into ``site``, registering ``tasks``
    (name -> ``module:attribute``); ``editable``: the checkout it was installed from."""
    site.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n", encoding="utf-8"
    )
    points = "".join(f"{name} = {value}\n" for name, value in tasks.items())
    (info / "entry_points.txt").write_text(f"[experiments.tasks]\n{points}", encoding="utf-8")
    if editable is not None:
        url = {"url": editable.resolve().as_uri(), "dir_info": {"editable": True}}
        (info / "direct_url.json").write_text(json.dumps(url), encoding="utf-8")
    return site
