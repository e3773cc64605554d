"""The figures every task's runs get in a report, with no code of the task's own.

- ``<task>_objective.png``: the objective against each setting the runs vary (the keys of
  their command lines' overrides whose values differ between them: a sweep's swept keys), one
  panel per setting: the runs' points and their median per value; numbers on their own scale
  (log where they span over two decades), other values (``optim=adam``) side by side.
- ``<task>_history.png``: the objective's history per run, where the runs recorded it at
  more than one step (a loss per step or per epoch).

Both from FINISHED runs only, the objective's direction said in the title. A task's own
figures (``Task.report``) come beside these (:mod:`.assemble`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure

from experiments.names import without_tags
from experiments.reporting import as_number, label, median_line, ticks_at

MAX_PANELS = 6  # settings shown; beyond, those with the most distinct values
MAX_CURVES = 60  # histories drawn; a legend beyond 30 runs is left out
OVERRIDE = re.compile(r"^[+~]*([A-Za-z_][\w./-]*)=(\S*)")
# Where and how, not what: records, launchers, skipping, checkpoints, a run to continue.
NOT_SETTINGS = ("tracking.", "hydra.", "skip_existing", "checkpoint.", "resume.")


def varying(runs: Sequence[Any]) -> list[str]:
    """The settings the runs were set apart by: the keys of their command lines' overrides
    (``overrides`` tag; labels such as ``tracking.tags.*`` left out) whose values differ
    between them, at most :data:`MAX_PANELS`."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in overrides_of(run).items():
            values.setdefault(key, set()).add(setting(run, key) or value)
    found = [
        (len(seen), key)
        for key, seen in values.items()
        if len(seen) > 1 or any(key not in overrides_of(run) for run in runs)
    ]
    chosen = sorted(found, key=lambda item: (-item[0], item[1]))[:MAX_PANELS]
    return sorted(key for _, key in chosen)


def overrides_of(run: Any) -> dict[str, str]:
    """A run's overrides (``task.steps=3 optim=adam``): key -> value, settings only."""
    found = {}
    for item in without_tags(run.tags.get("overrides", "").split()):
        matched = OVERRIDE.match(item)
        if matched and not matched.group(1).startswith(NOT_SETTINGS):
            found[matched.group(1)] = matched.group(2)
    return found


def setting(run: Any, key: str) -> Optional[str]:
    """The run's value of a setting: its param (as the run used it), else its override (a
    choice of a config group, ``optim=adam``)."""
    if key in run.params:
        return run.params[key]
    return overrides_of(run).get(key)


def objective_figure(
    runs: Sequence[Any], objective: str, direction: str, settings: Sequence[str]
) -> Figure:
    """The objective against each of ``settings``, one panel each."""
    columns = min(3, len(settings))
    rows = math.ceil(len(settings) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flat
    better = "higher" if direction == "maximize" else "lower"
    figure.suptitle(f"{objective} against each setting the runs vary ({better} is better)")
    for ax, key in zip(axes, settings):
        points = [(setting(run, key), run.metrics.get(objective)) for run in runs]
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        _panel(ax, key, points)
        ax.set(xlabel=key, ylabel=objective)
        ax.grid(True, which="both", alpha=0.4)
    for ax in list(axes)[len(settings) :]:
        ax.set_visible(False)
    return figure


def _panel(ax: Any, key: str, points: list[tuple[Any, float]]) -> None:
    numbers = [(as_number(x), y) for x, y in points]
    if numbers and all(x is not None for x, _ in numbers):
        xs = [x for x, _ in numbers]
        if min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
        ax.plot(xs, [y for _, y in numbers], "o", alpha=0.5, label="runs")
        ax.plot(*median_line(numbers), "-", label="median")
        ticks_at(ax, xs)
        ax.legend(fontsize="small")
        return
    categories = sorted({str(x) for x, _ in points})
    where = {name: index for index, name in enumerate(categories)}
    ax.plot([where[str(x)] for x, _ in points], [y for _, y in points], "o", alpha=0.6)
    ax.set_xticks(range(len(categories)), labels=categories, rotation=30, ha="right")


def history_figure(runs: Sequence[Any], objective: str, direction: str) -> Figure | None:
    """The objective's history per run, where runs recorded it at more than one step."""
    curves = [(label(run), run.history(objective)) for run in runs]
    curves = [(name, points) for name, points in curves if len(points) > 1][:MAX_CURVES]
    if not curves:
        return None
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    ax = figure.subplots()
    for name, points in curves:
        ax.plot([step for step, _ in points], [value for _, value in points], lw=1.2, label=name)
    values = [value for _, points in curves for _, value in points if math.isfinite(value)]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    better = "higher" if direction == "maximize" else "lower"
    ax.set(xlabel="step", ylabel=objective, title=f"{objective} per run ({better} is better)")
    ax.grid(True, which="both", alpha=0.4)
    if len(curves) <= 30:
        ax.legend(fontsize="x-small", ncol=max(1, len(curves) // 15))
    return figure
