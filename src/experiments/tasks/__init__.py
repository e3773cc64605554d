"""The tasks a run can execute, by the name used on the command line (``task=minimize``).

A task module provides a schema dataclass (registered as ``<name>_schema``; its YAML in
``conf/task/<name>.yaml`` extends it), ``run(cfg, ctx) -> float | None``, which does the
work, records through ``ctx.recorder`` and returns the objective a sweeper would optimise,
and ``OBJECTIVE``, the name of the metric holding that objective. A task may also provide
``prepare()``, which the runner calls while the tracking store opens (imports the task
will need anyway).
Tasks never import MLflow.

Metric names say where a reviewer finds them. MLflow's UI makes one chart section per
prefix before the last ``/`` and sorts the sections by name, putting metrics without a
prefix last. So a task's own results are ``result/<name>`` (``result/loss``), ahead of the
``time/...`` timings and ``var/...`` paths; ``check/...`` (derivative's check against
sympy) sorts first, with them.
"""

from __future__ import annotations

from types import ModuleType

from experiments.tasks import derivative, matmul, minimize

TASKS: dict[str, ModuleType] = {
    "derivative": derivative,
    "matmul": matmul,
    "minimize": minimize,
}


def schemas() -> dict[str, type]:
    """Each task's schema dataclass, by task name."""
    return {name: module.SCHEMA for name, module in TASKS.items()}
