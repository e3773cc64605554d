"""What became of each job of a sweep: an ``outcome.json`` in the job's own directory.

Each job writes its outcome (status, run id, objective, reason) into its own output directory,
so the summary covers jobs that ran in other processes or on other hosts, and jobs that never
got as far as an MLflow run (a bad value in the sweep).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from experiments.record import liveness

log = logging.getLogger(__name__)

OUTCOME_FILE = "outcome.json"
STATUSES = ("FINISHED", "PRUNED", "FAILED", "KILLED", "UNSYNCED", "SKIPPED", "RUNNING")


@dataclass
class Outcome:
    """What became of one job of a sweep."""

    job: int
    overrides: list[str]
    status: str  # RUNNING, then FINISHED, PRUNED (a search stopped it), FAILED, KILLED,
    # UNSYNCED or SKIPPED
    run_id: Optional[str] = None
    objective: Optional[float] = None
    reason: Optional[str] = None
    host: Optional[str] = None  # where the job's process runs, its pid and start time:
    pid: Optional[int] = None  # the pid alone may be another process's by now
    pid_started: Optional[float] = None
    place: Optional[str] = None  # liveness.place(): where the pid means that process
    directory: Optional[str] = None  # the job's output directory (set when read back)

    def write(self, output_dir: str | Path) -> None:
        """Save next to the job's other files, for the launching process to collect."""
        target = Path(output_dir, OUTCOME_FILE)
        fields = {k: v for k, v in asdict(self).items() if k != "directory"}
        temporary = target.with_name(f".{OUTCOME_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(fields), encoding="utf-8")
        os.replace(temporary, target)

    @classmethod
    def read(cls, path: str | Path) -> Outcome:
        """An outcome file as written, fields this version does not know left out.

        Raises:
            OSError, ValueError, TypeError: the file cannot be read, or is not an outcome.
        """
        fields = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            **{key: value for key, value in fields.items() if key in cls.__dataclass_fields__}
        )

    def gone(self) -> bool:
        """Whether this RUNNING job's process has ended (as far as this host can tell)."""
        if not liveness.same_place(self.host, self.place) or self.pid is None:
            return False
        return self.pid != os.getpid() and not liveness.process_alive(self.pid, self.pid_started)

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to this job's process, if it is still that process (see liveness)."""
        if not liveness.same_place(self.host, self.place) or self.pid in (None, os.getpid()):
            return False
        return liveness.signal_process(self.pid, self.pid_started, signum)


def started(job: int, overrides: list[str], output_dir: str | Path) -> Outcome:
    """Mark a job RUNNING in its directory (with its process), and return its outcome."""
    here = os.getpid()
    outcome = Outcome(
        job,
        overrides,
        "RUNNING",
        host=liveness.host(),
        pid=here,
        pid_started=liveness.process_started(here),
        place=liveness.place(),
    )
    outcome.write(output_dir)
    outcome.status = "FAILED"  # until the job says otherwise
    return outcome


def read_outcomes(sweep_dir: str | Path) -> list[Outcome]:
    """Every outcome written under a sweep directory, in job order."""
    found = []
    for path in Path(sweep_dir).glob(f"*/{OUTCOME_FILE}"):
        try:
            outcome = Outcome.read(path)
        except (OSError, ValueError, TypeError):
            log.warning("unreadable job outcome %s", path)
            continue
        outcome.directory = str(path.parent)
        found.append(outcome)
    return sorted(found, key=lambda outcome: outcome.job)


def status_of(result: Any) -> str:
    """A job's status in the summary, from the runner's ``Result``."""
    if result.skipped:
        return "SKIPPED"
    if not result.recorded and not result.delivery.offline:
        return "UNSYNCED"
    return "FINISHED"


def counts_line(outcomes: list[Outcome]) -> str:
    """E.g. ``20 jobs: 18 finished, 1 failed, 1 skipped``."""
    parts = [f"{len(outcomes)} job" + ("" if len(outcomes) == 1 else "s")]
    details = []
    for status in STATUSES:
        count = sum(outcome.status == status for outcome in outcomes)
        if count:
            details.append(f"{count} {status.lower()}")
    return parts[0] + (": " + ", ".join(details) if details else "")
