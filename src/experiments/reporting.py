"""The pieces a report's figures and tables are made of, for any task's own report
(``Task.report``, see :mod:`experiments.api`) and for the report every sweep gets.

Plain text tables (:func:`aligned`, :func:`number`), medians of points that share an x
(:func:`median_line`), groups (:func:`group`), x ticks at the values a sweep set
(:func:`ticks_at`), a param read as a number (:func:`as_number`) and a run's label
(:func:`label`). Figures use matplotlib's object API (``Figure``), never pyplot. Imports
neither torch nor MLflow: it runs where a report is drawn.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional, Sequence

MAX_TICKS = 12  # label every swept value up to this many; matplotlib's own ticks beyond


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns, left-aligned, two spaces apart; a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def number(value: Optional[float]) -> str:
    """A value to six significant digits; empty when there is none."""
    return "" if value is None else f"{value:.6g}"


def as_number(text: Optional[str]) -> Optional[float]:
    """A param's value as a finite number, or None (``null``, not a number, infinite)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def label(run: Any) -> str:
    """A run's label: its overrides (what sets it apart in a sweep), else its name."""
    overrides = run.tags.get("overrides", "")
    if overrides and overrides != "(none)":
        return overrides
    return run.name or run.run_id


def group(items: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
    """``items`` by ``key``, keys sorted."""
    groups: dict[Any, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(sorted(groups.items(), key=lambda pair: str(pair[0])))


def medians(pairs: Iterable[tuple[Any, float]]) -> dict[Any, float]:
    """The median value of each key (NaNs left out; NaN where nothing else is)."""
    values: dict[Any, list[float]] = defaultdict(list)
    for key, value in pairs:
        values[key].append(value)
    return {key: median(found) for key, found in values.items()}


def median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def median_line(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """x ascending, with the median y of the points that share an x."""
    found = medians(points)
    xs = sorted(found)
    return xs, [found[x] for x in xs]


def ticks_at(ax: Any, values: Iterable[float]) -> None:
    """Label the x axis at the swept values (32, 64, ...) rather than at powers of ten."""
    from matplotlib.ticker import NullFormatter

    ticks = sorted(set(values))
    if 0 < len(ticks) <= MAX_TICKS:
        ax.set_xticks(ticks, labels=[f"{tick:.4g}" for tick in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
