"""``python -m experiments.resume RUN_ID [OVERRIDES ...]``: continue a run that was stopped,
killed or preempted, from its latest checkpoint, as the same MLflow run.

Reads the run's record (its overrides, where it ran, its checkpoints) from its store, then
runs ``python -m experiments`` with them in a process of its own, asking it to continue the
run (``resume.run``, ``resume.checkpoint``): the run is RUNNING again, its task starts from
the checkpoint's step with its state and random generators as they were, the steps it runs
again are not recorded twice, and it ends FINISHED (or KILLED, FAILED) as any run does, with
tags that say how many times it was continued (``resumed``) and from which step
(``resumed_from``). On the machine that ran it, its checkpoints are read where it left them,
and the new attempt runs in its directory; elsewhere (``--from URI``, a team's server), the
latest checkpoint the store keeps (the artifact ``checkpoint/``) is downloaded first.

Refused, in one line and with nothing run: an unknown run, a run that FINISHED, a sweep's
parent, a config that is not the run's (an override that changes it), unless ``--new-run``:
a new run from that checkpoint, tagged ``resumed_from_run``.

Exit status: the command's (0 when the run ended FINISHED), 1 when refused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from experiments import checkpoints, config
from experiments.errors import ConfigError, first_line
from experiments.names import CHECKPOINT_TAG, CONFIG_HASH_TAG
from experiments.record import liveness, uris
from experiments.record.store import upload
from experiments.record.store.tracker import Tracker, open_existing
from experiments.reproduce import records
from experiments.reproduce.command import guarded

OPEN_TIMEOUT_S = 10.0
ARTIFACT = "checkpoint"  # the latest checkpoint, as the store keeps it


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    return guarded(_resume, parse_args(argv))


def _resume(args: argparse.Namespace) -> int:
    store = open_existing(args.source, "--from", OPEN_TIMEOUT_S)
    _drained(store, args.run_id)
    record = records.read(store.client, args.run_id, store.shown)
    run = record.run
    if record.sweep:
        raise ConfigError(
            f"run {args.run_id} is a sweep's parent: continue its jobs (each by its id), or "
            "run the sweep again with skip_existing=true"
        )
    if run.info.status == "FINISHED" and not args.new_run:
        raise ConfigError(
            f"run {args.run_id} FINISHED: there is nothing to continue (--new-run starts a "
            "new run from its checkpoint)"
        )
    lost = liveness.lost_reason(run.data.tags, int(time.time() * 1000), args.lost_after_s)
    if run.info.status == "RUNNING" and lost is None and not args.new_run:
        raise ConfigError(
            f"run {args.run_id} is RUNNING: its process is alive (or, on another host, was "
            f"heard from in the last {args.lost_after_s:g} s); stop it first"
        )
    arguments = [item for item in records.command_line(record, args.overrides)]
    arguments = [item for item in arguments if "tags.rerun_of=" not in item]
    cfg, _ = _checked(record, arguments, args)
    found = checkpoint_of(store.client, run, args.workdir)
    directory = _directory(run)
    if args.new_run:
        asked = ["resume.new_run=true"]
        if found is not None:
            asked.append(f"resume.checkpoint={_quoted(str(found))}")
        else:
            raise ConfigError(f"run {args.run_id} left no checkpoint to start a new run from")
    else:
        asked = [f"resume.run={args.run_id}"]
        if found is not None:
            asked.append(f"resume.checkpoint={_quoted(str(found))}")
        if directory is not None:
            asked.append(f"hydra.run.dir={_quoted(str(directory))}")
    arguments = [*arguments, *asked]
    step = (checkpoints.manifest_of(found) or {}).get("step") if found is not None else None
    where = f"its checkpoint at step {step}" if step is not None else "its start (no checkpoint)"
    what = "a new run from" if args.new_run else "run"
    print(f"resume of {what} {args.run_id} ({run.info.run_name}) from {where}, in {store.shown}")
    shown = uris.scrub(" ".join(arguments))
    print(
        f"  MLFLOW_TRACKING_URI={uris.redact(store.uri)} python -m experiments {shown}", flush=True
    )
    del cfg
    # The store the run is in, as the environment names it: not a setting of the run.
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    command = [sys.executable, "-m", "experiments", *arguments]
    return subprocess.run(command, env=environment).returncode


def _drained(store: Tracker, run_id: str) -> None:
    """On the machine that ran it, what the run's journals hold and the store lacks goes in
    first (a run killed with its recording process: its last records, its overrides)."""
    run = records.get_run(store.client, run_id, store.shown)
    directory = run.data.tags.get(liveness.OUTPUT_DIR_TAG)
    for path in upload.journals_of(directory, run_id, store.key):
        try:
            upload.drain(store.client, Path(path), store.key, store.bulk)
        except RuntimeError as error:  # its process still writes it
            raise ConfigError(f"run {run_id}: {error}") from None


def _checked(record: records.Record, arguments: list[str], args: argparse.Namespace) -> tuple:
    """The config the command composes; one that is not the run's is refused (unless
    ``--new-run``)."""
    try:
        cfg, settings = records.composed(arguments)
    except Exception as error:  # Hydra's, OmegaConf's, or a value check's
        raise ConfigError(f"the run's config does not compose: {first_line(error)}") from None
    recorded = record.run.data.tags.get(CONFIG_HASH_TAG)
    now = config.config_hash(cfg)
    if recorded is not None and recorded != now and not args.new_run:
        given = " ".join(args.overrides) or "this version's defaults"
        raise ConfigError(
            f"run {record.run_id} was made with another config (config.hash {recorded}, "
            f"{now} with {given}): it cannot continue so; --new-run starts a new run from its "
            "checkpoint"
        )
    return cfg, settings


def checkpoint_of(client: MlflowClient, run, workdir: Path) -> Optional[Path]:
    """The run's latest whole checkpoint: where it left it (on the machine that ran it),
    else the store's copy, downloaded into ``workdir``; None when it left none."""
    directory = run.data.tags.get(CHECKPOINT_TAG)
    here = liveness.same_place(run.data.tags.get("host"), run.data.tags.get("host.id"))
    if directory and (here is not False or Path(directory).is_dir()):
        found = checkpoints.latest_path(Path(directory))
        if found is not None:
            return found
    try:
        present = {item.path for item in client.list_artifacts(run.info.run_id, ARTIFACT)}
    except MlflowException:
        present = set()
    if f"{ARTIFACT}/{checkpoints.MANIFEST_FILE}" not in present:
        return None
    target = workdir / "outputs" / "resumed" / run.info.run_id
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        local = Path(client.download_artifacts(run.info.run_id, ARTIFACT, scratch))
        manifest = checkpoints.manifest_of(local)
        if manifest is None:
            raise ConfigError(f"run {run.info.run_id}: its stored checkpoint is not whole")
        final = target / "checkpoints" / f"{checkpoints.PREFIX}{int(manifest['step']):012d}"
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            local.rename(final)
    return final


def _directory(run) -> Optional[Path]:
    """The run's own directory, where it can be written here: the new attempt runs there."""
    directory = run.data.tags.get(liveness.OUTPUT_DIR_TAG)
    if directory and Path(directory).is_dir():
        return Path(directory)
    return None


def _quoted(value: str) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if all(ch.isalnum() or ch in "_-./:@" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.resume",
        description="Continue a stopped, killed or preempted run from its latest checkpoint, "
        "as the same MLflow run.",
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to continue")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="OVERRIDES",
        help="overrides on top of the recorded ones; one that changes the config needs --new-run",
    )
    parser.add_argument(
        "--from",
        dest="source",
        metavar="URI",
        help="the store that holds RUN_ID (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "here); the run goes on in it",
    )
    parser.add_argument(
        "--new-run",
        action="store_true",
        help="start a new run from the run's checkpoint (a FINISHED one's too, or with "
        "another config), tagged resumed_from_run",
    )
    parser.add_argument(
        "--lost-after-s",
        type=float,
        default=300.0,
        metavar="S",
        help="a RUNNING run of another host silent this long is lost, and may be continued "
        "(default: 300)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("."), help=argparse.SUPPRESS)
    return parser.parse_args(argv)
