"""The tasks a run can execute, by the name used on the command line (``task=minimize``).

A task is an :class:`experiments.api.Task` registered under its name (the contract and how
to register are written there): the built-in three in this package's own entry points, a
task of one's own in its package's, or in ``EXPERIMENTS_TASKS``. :mod:`.registry` finds
them and loads the one a command selects; nothing else is imported.

Each built-in task is a package ``tasks/<name>/``: its ``task`` module defines the task
(``TASK``), its ``report`` module its figures in a sweep's report (drawn without torch), and
the other modules beside it serve that task only (``matmul/timing.py``,
``minimize/plots.py``). What two tasks share lives here (``expressions.py``, the safe
expression language), and what every task is handed, in ``context.py``.

Tasks import only :mod:`experiments.api` and :mod:`experiments.tasks.context`, the shared
modules at the top of the package (config checks, devices, errors, names, optimizers,
signals) and their own folder: never MLflow, the runner, the record path or the sweeps.
Importing this package loads no task (a bare machine with torch only can use
``tasks.matmul.timing``).

Metric names say where a reviewer finds them. MLflow's UI makes one chart section per
prefix before the last ``/`` and sorts the sections by name, putting metrics without a
prefix last. So a task's objective is ``objective/<name>`` (``objective/loss``), and its
other results are ``result/<name>`` (``result/grad_norm``), ahead of the ``time/...``
timings, derivative's ``sympy/...`` errors against sympy and the ``var/...`` paths (see
:mod:`experiments.names`).
"""

from __future__ import annotations

from typing import Any

from experiments.tasks import registry


def load(name: str) -> Any:
    """The :class:`~experiments.api.Task` of ``task=<name>`` (imported on first use).

    Raises:
        registry.TaskError: no task has that name, or it cannot be loaded (one line).
    """
    return registry.load(name)


def find(name: str) -> Any:
    """The task of ``task=<name>``, or None when no task has that name."""
    return registry.find(name)


def names() -> list[str]:
    """Every registered task's name."""
    return registry.names()
