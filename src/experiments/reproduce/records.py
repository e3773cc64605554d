"""What a run's record holds to run it again, read back from a store.

A run recorded by this package keeps the command line's overrides that made it
(``overrides.yaml``), its experiment, and where it ran (``environment.json``). A sweep's
parent keeps the sweep's overrides, and its launcher's (``hydra_overrides.yaml``). From
these, :func:`command_line` writes the command that runs it again, with the user's overrides
on top, and :func:`check_composes` makes sure this version still composes it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from experiments.errors import ConfigError, first_line
from experiments.names import (
    ENVIRONMENT_FILE,
    LAUNCH_FILE,
    OVERRIDES_FILE,
    PARENT_TAG,
    RERUN_OF_TAG,
    STUDY_TAG,
    SWEEP_TAG,
)

# A rerun records in the user's store, always anew: these of the original's overrides are
# left out (its experiment, tracking.experiment where it was given, is kept).
DROPPED = ("tracking.uri", "tracking.offline", "skip_existing")


@dataclass
class Record:
    """A recorded run as a rerun needs it."""

    run: Run
    experiment: str
    overrides: list[str]  # the command line's overrides that made it
    launching: list[str]  # a sweep's launcher and sweeper overrides
    environment: Optional[dict[str, Any]]

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def sweep(self) -> bool:
        return self.run.data.tags.get(SWEEP_TAG) == "true"

    @property
    def task(self) -> Optional[str]:
        return self.run.data.tags.get("task")


def get_run(client: MlflowClient, run_id: str, store: str) -> Run:
    """The run ``run_id``; an unknown id is one line naming the store."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ConfigError(f"RUN_ID {run_id!r}: no such run in {store}") from None
        raise


def read(client: MlflowClient, run_id: str, store: str) -> Record:
    """The record of ``run_id`` in ``client``'s store (``store`` names it in errors).

    Raises:
        ConfigError: no such run, or a run with nothing to rerun it from.
    """
    run = get_run(client, run_id, store)
    experiment = client.get_experiment(run.info.experiment_id).name
    texts = artifact_texts(client, run_id, (OVERRIDES_FILE, LAUNCH_FILE, ENVIRONMENT_FILE))
    if texts[OVERRIDES_FILE] is None:
        raise ConfigError(no_record_line(run))
    environment = texts[ENVIRONMENT_FILE]
    return Record(
        run=run,
        experiment=experiment,
        overrides=[str(item) for item in yaml.safe_load(texts[OVERRIDES_FILE]) or []],
        launching=[str(item) for item in yaml.safe_load(texts[LAUNCH_FILE] or "[]") or []],
        environment=json.loads(environment) if environment else None,
    )


def no_record_line(run: Run) -> str:
    """Why a run cannot be rerun, and what to type instead."""
    tags = run.data.tags
    given = tags.get("overrides", "")
    given = "" if given == "(none)" else given
    if tags.get(SWEEP_TAG) == "true":
        again = " ".join(["python -m experiments -m", given]).strip()
    elif "task" in tags:
        again = " ".join(["python -m experiments", given]).strip()
    else:
        return (
            f"run {run.info.run_id} has no record to rerun from ({OVERRIDES_FILE}): it was "
            "not recorded by python -m experiments"
        )
    return (
        f"run {run.info.run_id} has no record to rerun from ({OVERRIDES_FILE}: it was recorded "
        f"before reruns); run its command again instead: {again}"
    )


def environment_of(client: MlflowClient, run_id: str) -> Optional[dict[str, Any]]:
    """Where the run ran (its ``environment.json``), or None when it has none."""
    text = artifact_texts(client, run_id, (ENVIRONMENT_FILE,))[ENVIRONMENT_FILE]
    return json.loads(text) if text else None


def artifact_texts(
    client: MlflowClient, run_id: str, names: Sequence[str]
) -> dict[str, Optional[str]]:
    """Text artifacts of the run at its top level, by name; None for those it has not."""
    try:
        present = {item.path for item in client.list_artifacts(run_id)}
    except MlflowException:
        present = set()
    texts: dict[str, Optional[str]] = dict.fromkeys(names)
    with tempfile.TemporaryDirectory(prefix="experiments-rerun-") as scratch:
        for name in names:
            if name in present:
                path = client.download_artifacts(run_id, name, scratch)
                texts[name] = Path(path).read_text(encoding="utf-8")
    return texts


def command_line(record: Record, overrides: Sequence[str]) -> list[str]:
    """The arguments of ``python -m experiments`` that run ``record`` again.

    The original's overrides, less where it was recorded (:data:`DROPPED`) and its extra
    tags, then the ``rerun_of`` tag, then the user's overrides, which come last and so win.
    Its experiment was either the task's own or set by these overrides, so it stays the
    same (see :func:`check_composes` for ``skip_existing``). A search searches again, in a
    study of its own in memory.
    """
    kept = [item for item in record.overrides if not _dropped(item)]
    arguments = ["-m", *record.launching] if record.sweep else []
    if record.sweep and STUDY_TAG in record.run.data.tags:
        # A search runs again as a new study, in memory: its stored one holds its trials.
        arguments.append("hydra.sweeper.storage=memory")
    return [*arguments, *kept, f"++tracking.tags.{RERUN_OF_TAG}={record.run_id}", *overrides]


def _dropped(item: str) -> bool:
    key = item.split("=", 1)[0].lstrip("+~")
    return key in DROPPED or key.startswith(("tracking.tags.", "resume."))


def check_composes(record: Record, arguments: list[str], given: Sequence[str] = ()) -> None:
    """Compose and validate the config that ``arguments`` give, as the command would.

    The recorded overrides first, then with the user's (``given``, the last of
    ``arguments``) on top, so that a refusal says which of the two is at fault. Hydra's own
    settings (``hydra.launcher.n_jobs=2``, ``hydra/launcher=joblib``) are composed with the
    rest: Hydra checks them against its launcher's and sweeper's schemas. A sweep's
    overrides are composed with the first value of each swept key. Where the config asks to
    skip what already finished (a preset's ``skip_existing``), the rerun asks not to
    (``skip_existing=false`` is appended), or it would find the original; where it would go
    to another experiment than the original's, it is sent to the original's.

    Raises:
        ConfigError: the config does not compose with this version, or a value is refused;
            the line names the key.
    """
    recorded = arguments[: len(arguments) - len(given)]
    try:
        _compose(recorded)
    except Exception as error:  # Hydra's, OmegaConf's, or a value check's (ConfigError)
        raise ConfigError(
            f"the recorded config does not compose with this version: {first_line(error)}"
        ) from None
    try:
        settings = _compose(arguments)
    except Exception as error:
        raise ConfigError(f"the overrides given do not apply: {first_line(error)}") from None
    if settings.skip_existing:
        arguments.append("skip_existing=false")
    if (settings.tracking.experiment or settings.task.name) != record.experiment:
        arguments.append(f"tracking.experiment={_quoted(record.experiment)}")


def _compose(arguments: Sequence[str]) -> Any:
    """The validated config of ``python -m experiments ARGUMENTS`` (a sweep: its first job)."""
    return composed(arguments)[1]


def composed(arguments: Sequence[str]) -> tuple[Any, Any]:
    """The composed config of ``python -m experiments ARGUMENTS``, and it validated.

    The ``hydra`` node is composed too, with the ``hydra.*`` overrides, and then left out:
    a key its launcher or sweeper does not have, or a value of the wrong type, is refused
    here as the command would refuse it; so is a sweep over one of Hydra's own settings.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from experiments import config, registration, tasks
    from experiments.tasks import registry

    registration.register()
    overrides = [item for item in arguments if item != "-m"]
    single = []
    for item, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if parsed.is_sweep_override() and not parsed.is_hydra_override():
            first = next(iter(parsed.sweep_string_iterator()))
            single.append(f"{item.split('=', 1)[0]}={first}")
        else:
            single.append(item)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("experiments.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=single)
        task = tasks.load(config.task_name_of(cfg))
        return cfg, config.validate(cfg, registry.settings_of(task))
    finally:
        GlobalHydra.instance().clear()


def _quoted(value: str) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_rerun(
    client: MlflowClient, experiment: str, original: str, sweep: bool, since_ms: int
) -> Optional[Run]:
    """The run (a sweep: its parent) that a rerun of ``original`` started after ``since_ms``."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=(
            f"tags.`{RERUN_OF_TAG}` = '{original}' and attributes.start_time >= {since_ms}"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in runs:
        is_parent = run.data.tags.get(SWEEP_TAG) == "true"
        if is_parent == sweep and (sweep or PARENT_TAG not in run.data.tags):
            return run
    return None
