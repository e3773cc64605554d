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
    python -m experiments.rerun RUN_ID --repeat 3         # a timing against 3 processes' spread

With ``--repeat N`` the command runs N times, each a run of its own with its own verdict
(``rerun.txt``, ``reproduced``), and the verdict printed is over all of them
(:func:`.compare.across`): a timing against the spread between the reruns' processes.

Exit status: 0 reproduced, 3 not reproduced (the verdict says why), 1 refused (nothing
run), or the command's own when the rerun itself could not run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Callable, Sequence

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
    return guarded(_rerun, parse_args(argv))


def guarded(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command of this package that reads a store (rerun, resume): ``body(args)`` with
    MLflow's HTTP calls bounded and passwords kept out of its output; a refusal or a store's
    failure is one ``error:`` line and exit status 1."""
    process.set_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with process.mlflow_http_bounds(OPEN_TIMEOUT_S), process.scrubbed_output():
            return body(args)
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
    target = Tracker(None, OPEN_TIMEOUT_S)  # where the command recorded: this user's store
    original = compare.Side(source.client, record.run, record.environment)
    given = f" with {' '.join(args.overrides)}" if args.overrides else ""
    reruns, verdicts = [], []
    for _ in range(args.repeat):
        since_ms = int(time.time() * 1000) - 1000
        status = subprocess.run([sys.executable, "-m", "experiments", *arguments]).returncode
        new = records.find_rerun(
            target.client, record.experiment, record.run_id, record.sweep, since_ms
        )
        if new is None:
            print(
                f"error: the rerun recorded no {kind} in {target.shown} (exit status {status})",
                file=sys.stderr,
            )
            return status or 1
        rerun = compare.side(target.client, new)
        verdict = compare.compare(original, rerun, args.overrides)
        title = f"rerun {new.info.run_id} of {record.run_id} ({record.run.info.run_name})"
        text = verdict.text(title + given)
        if args.repeat == 1:
            print("\n" + text, end="")
        target.client.log_text(new.info.run_id, text, VERDICT_FILE)
        target.client.set_tag(new.info.run_id, REPRODUCED_TAG, verdict.tag)
        reruns.append(rerun)
        verdicts.append(verdict)
    if args.repeat == 1:
        return verdicts[0].status
    verdict = compare.across(original, reruns, verdicts)
    title = f"{args.repeat} reruns of {record.run_id} ({record.run.info.run_name})" + given
    print("\n" + verdict.text(title), end="")
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
    parser.add_argument(
        "--repeat",
        type=_at_least_one,
        default=1,
        metavar="N",
        help=(
            "run it N times, each a run of its own, and judge over all of them: a timing "
            "against the spread between the reruns' processes (default 1)"
        ),
    )
    return parser.parse_args(argv)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value
