"""The report's table of every run, and the words it is summed up in."""

from __future__ import annotations

from typing import Mapping, Sequence

from mlflow.entities import Run

from experiments.names import ERROR_TAG, recorded, result
from experiments.reporting import aligned, number


def run_table(runs: Sequence[Run], keys: Mapping[str, Sequence[str]]) -> str:
    """Every run: name, status, device, key metrics, and the error of failed runs.

    Args:
        keys: by task, the metrics its key-metric column shows: its objective, then the
            results its ``Task.table`` names.
    """
    rows = [("run", "status", "device", "key metric", "error")]
    for run in sorted(runs, key=lambda run: (task_of(run), run.info.start_time or 0)):
        tags = run.data.tags
        rows.append(
            (
                run.info.run_name or run_id_of(run),
                run.info.status,
                tags.get("device", ""),
                key_metric(run, keys.get(task_of(run), ())),
                tags.get(ERROR_TAG, "") if run.info.status != "FINISHED" else "",
            )
        )
    return aligned(rows)


def key_metric(run: Run, keys: Sequence[str]) -> str:
    """The run's key results in words: ``loss=-12``, ``f=25 max_rel_err=0``."""
    found = {key: recorded(run.data.metrics, key) for key in keys}
    return " ".join(
        f"{key.rsplit('/', 1)[-1]}={number(value)}"
        for key, value in found.items()
        if value is not None
    )


def table_key(name: str) -> str:
    """A ``Task.table`` entry as a metric: a bare name is a result (``result/<name>``)."""
    return name if "/" in name else result(name)


def counts(runs: Sequence[Run]) -> str:
    """E.g. ``4 runs: 3 finished, 1 failed``."""
    statuses = [run.info.status for run in runs]
    parts = [f"{statuses.count(s)} {s.lower()}" for s in sorted(set(statuses))]
    return f"{plural(len(runs), 'run')}: {', '.join(parts)}"


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def task_of(run: Run) -> str:
    """The task a run executed (its ``task`` tag)."""
    return run.data.tags.get("task", "")


def run_id_of(run: Run) -> str:
    """The run's id."""
    return run.info.run_id
