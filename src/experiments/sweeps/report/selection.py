"""Which runs a report compares: a sweep's jobs, an experiment's runs, or the newest sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from experiments.errors import ConfigError, first_line
from experiments.names import PARENT_TAG, SWEEP_TAG
from experiments.sweeps.report.tables import counts, run_id_of


@dataclass
class Selection:
    """The runs to report, and the sweep's parent run when reporting a sweep."""

    runs: list[Run]
    label: str  # names the output directory
    title: str
    parent: Run | None = None


def select(
    client: MlflowClient, parent: str | None = None, experiment: str | None = None
) -> Selection:
    """The runs of a parent run, of an experiment, or (neither given) of the latest sweep."""
    if experiment is not None:
        return _experiment_runs(client, experiment)
    found = _parent_run(client, parent) if parent is not None else _latest_sweep(client)
    runs = _search(client, _experiment_ids(client), f"tags.`{PARENT_TAG}` = '{run_id_of(found)}'")
    # A resumed sweep's skipped jobs point to runs of an earlier sweep: report them too.
    reused = found.data.tags.get("sweep.reused_runs", "")
    runs += [client.get_run(run_id) for run_id in reused.split(",") if len(run_id) == 32]
    if not runs:
        raise ConfigError(
            f"no runs found under parent run {run_id_of(found)} ({found.info.run_name})"
        )
    name = found.info.run_name or run_id_of(found)
    return Selection(runs, name, f"Sweep {name!r} (run {run_id_of(found)}): {counts(runs)}", found)


def _experiment_runs(client: MlflowClient, name: str) -> Selection:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = ", ".join(sorted(e.name for e in _all_pages(client.search_experiments)))
        raise ConfigError(f"--experiment {name!r}: no such experiment; experiments: {names}")
    runs = [
        run
        for run in _search(client, [experiment.experiment_id])
        if run.data.tags.get(SWEEP_TAG) != "true"  # a sweep's parent is not a job
    ]
    if not runs:
        raise ConfigError(f"no runs found in experiment {name!r}")
    return Selection(runs, name, f"Experiment {name!r}: {counts(runs)}")


def _parent_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"--parent {run_id}: no such run ({first_line(error)})") from error


def _latest_sweep(client: MlflowClient) -> Run:
    found = client.search_runs(
        _experiment_ids(client),
        filter_string=f"tags.{SWEEP_TAG} = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise ConfigError(
            "no sweep (parent run) in this store; pass --parent RUN_ID or --experiment NAME"
        )
    return found[0]


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in _all_pages(client.search_experiments)]


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    """Every matching run, oldest first, across as many pages as MLflow returns."""
    return _all_pages(
        lambda page_token: client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
    )


def _all_pages(fetch: Callable[..., list]) -> list:
    found, token = [], None
    while True:
        page = fetch(page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found
