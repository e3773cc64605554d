"""``python -m experiments.rerun RUN_ID [OVERRIDES ...]``: run a recorded run again, and judge.

Reads the run's record (its overrides, its experiment, where it ran) from the store, runs
``python -m experiments`` with them in a process of its own (a sweep's parent: the whole
sweep, ``-m``, as a new sweep), with the given overrides on top, in the same experiment and
tagged ``rerun_of``. Then compares the two (:mod:`.compare`), prints the verdict and logs it
into the new run: ``rerun.txt`` and the tag ``reproduced``.

Usage::

    python -m experiments.rerun RUN_ID                    # the same, here and now
    python -m experiments.rerun RUN_ID device=cuda        # a CPU measurement on a GPU
    python -m experiments.rerun RUN_ID --from http://team-server:5000   # recorded here

Exit status: 0 reproduced, 3 not reproduced (the verdict says why), 1 refused (nothing
run), or the command's own when the rerun itself could not run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Sequence

from mlflow.exceptions import MlflowException

from experiments import process
from experiments.errors import ConfigError, first_line
from experiments.names import REPRODUCED_TAG
from experiments.record.store.tracker import Tracker, open_existing
from experiments.reproduce import compare, records

OPEN_TIMEOUT_S = 10.0
NOT_REPRODUCED_STATUS = compare.NOT_REPRODUCED_STATUS
VERDICT_FILE = "rerun.txt"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse_args(argv)
    process.set_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with process.mlflow_http_bounds(OPEN_TIMEOUT_S), process.scrubbed_output():
            return _rerun(args)
    except (ConfigError, MlflowException, OSError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    finally:
        process.restore_env()  # called in-process (tests, scripts), it leaves nothing set


def _rerun(args: argparse.Namespace) -> int:
    source = open_existing(args.source, "--from", OPEN_TIMEOUT_S)
    record = records.read(source.client, args.run_id, source.shown)
    arguments = records.command_line(record, args.overrides)
    records.check_composes(record, arguments, args.overrides)
    kind = "sweep" if record.sweep else "run"
    print(f"rerun of {kind} {record.run_id} ({record.run.info.run_name}) from {source.shown}")
    print(f"  python -m experiments {' '.join(arguments)}", flush=True)
    since_ms = int(time.time() * 1000) - 1000
    status = subprocess.run([sys.executable, "-m", "experiments", *arguments]).returncode
    target = Tracker(None, OPEN_TIMEOUT_S)  # where the command recorded: this user's store
    new = records.find_rerun(
        target.client, record.experiment, record.run_id, record.sweep, since_ms
    )
    if new is None:
        print(
            f"error: the rerun recorded no {kind} in {target.shown} (exit status {status})",
            file=sys.stderr,
        )
        return status or 1
    original = compare.Side(source.client, record.run, record.environment)
    verdict = compare.compare(original, compare.side(target.client, new), args.overrides)
    title = f"rerun {new.info.run_id} of {record.run_id} ({record.run.info.run_name})" + (
        f" with {' '.join(args.overrides)}" if args.overrides else ""
    )
    text = verdict.text(title)
    print("\n" + text, end="")
    target.client.log_text(new.info.run_id, text, VERDICT_FILE)
    target.client.set_tag(new.info.run_id, REPRODUCED_TAG, verdict.tag)
    return verdict.status


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.rerun",
        description=(
            "Run a recorded run (or a sweep, from its parent run) again from its record, "
            "with overrides on top, and say whether it reproduced."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to run again")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],  # optional: without a default, argparse calls it required in its usage error
        metavar="OVERRIDES",
        help="key=value overrides on top of the recorded ones, e.g. device=cuda",
    )
    parser.add_argument(
        "--from",
        dest="source",
        metavar="URI",
        help=(
            "the store that holds RUN_ID (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
            "here); the rerun is recorded in that default store"
        ),
    )
    return parser.parse_args(argv)
