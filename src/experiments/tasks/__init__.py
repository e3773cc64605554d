"""The tasks a run can execute, by the name used on the command line (``task=minimize``).

Each task is a package ``tasks/<name>/``: its ``task`` module is the task, and the other
modules beside it serve that task only (``matmul/timing.py``, ``minimize/plots.py``).
What two tasks share lives here (``expressions.py``, the safe expression language), and
what every task is handed, in ``context.py``.

A task module provides:

- ``SCHEMA``, its settings' dataclass (registered as ``<name>_schema``; its YAML in
  ``conf/task/<name>.yaml`` extends it);
- ``run(cfg, ctx) -> float | None``, which does the work, records through ``ctx.recorder``
  and returns the objective a sweeper would optimise;
- ``OBJECTIVE``, the name of the metric holding that objective (``objective/<name>``);
- optionally ``prepare()`` (imports the task needs, done while the tracking store opens),
  ``USES_OPTIMIZER`` (its runs record the ``optim.*`` settings) and ``resolved_params(cfg)``
  (settings the task resolves itself, recorded as params).

Tasks import only :mod:`experiments.tasks.context`, the shared modules at the top of the
package (config checks, devices, errors, names, optimizers) and their own folder: never
MLflow, the runner, the record path or the sweeps. Importing this package loads no task
(a bare machine with torch only can use ``tasks.matmul.timing``).

Metric names say where a reviewer finds them. MLflow's UI makes one chart section per
prefix before the last ``/`` and sorts the sections by name, putting metrics without a
prefix last. So a task's objective is ``objective/<name>`` (``objective/loss``), and its
other results are ``result/<name>`` (``result/grad_norm``), ahead of the ``time/...``
timings, derivative's ``sympy/...`` errors against sympy and the ``var/...`` paths (see
:mod:`experiments.names`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("derivative", "matmul", "minimize")


def load(name: str) -> ModuleType:
    """The task module of ``task=<name>`` (imported on first use).

    Raises:
        KeyError: no task has that name.
    """
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"experiments.tasks.{name}.task")


def find(name: str) -> ModuleType | None:
    """The task module of ``task=<name>``, or None when no task has that name."""
    return load(name) if name in NAMES else None


def schemas() -> dict[str, type]:
    """Each task's schema dataclass, by task name (imports every task)."""
    return {name: load(name).SCHEMA for name in NAMES}
