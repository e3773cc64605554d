"""A trial's side of a search with a pruner, in the job's process: the objective reported
at its steps, and the pruner's verdict.

The search says which study its jobs serve in the environment (:data:`ENV`: the storage's
URL, the study, the pruner), constant over a search, so a joblib worker, a submitit or
Slurm job inherits it, and no password in the URL reaches a job's config or its record. A
job knows its trial by ``tracking.tags.trial``. A job run in the search's own process (the
basic launcher) judges with the search's own study object, whatever its storage.

The task sees none of this: it calls ``ctx.recorder.report(value, step)``, and the runner's
recorder asks the :class:`Judge` this module gives (``sweeps`` imports Optuna, tasks never).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

from experiments import process

log = logging.getLogger("experiments.search")

ENV = "EXPERIMENTS_SEARCH"  # JSON: {"storage": URL or null, "study", "pruner", "every", "after"}

_studies: dict[str, Any] = {}  # the studies of the searches running in this process


@contextmanager
def offered(
    study: Any, name: str, url: Optional[str], pruner: str, every: int, after: int
) -> Iterator[None]:
    """While the block runs, the search's jobs can find its study (``url`` None: memory,
    reachable from this process only); with no pruner, they need not."""
    if pruner == "none":
        yield
        return
    _studies[name] = study
    found = {"storage": url, "study": name, "pruner": pruner, "every": every, "after": after}
    try:
        with process.env_for_block(ENV, json.dumps(found)):
            yield
    finally:
        _studies.pop(name, None)


def judge_for(tags: Mapping[str, Any]) -> Optional[Judge]:
    """The judge of this job's trial (its number in ``tags``, the run's ``tracking.tags``),
    or None: not a trial of a search with a pruner."""
    text = os.environ.get(ENV)
    number = tags.get("trial") if tags else None
    if not text or number is None:
        return None
    try:
        settings = json.loads(text)
        return Judge(
            settings["study"],
            settings["storage"],
            settings["pruner"],
            int(settings["every"]),
            int(settings["after"]),
            int(number),
        )
    except (ValueError, KeyError, TypeError) as error:
        log.warning("%s is not a search's: %s; this trial is not pruned", ENV, error)
        return None


class Judge:
    """Reports a trial's objective every ``every`` steps; says when the pruner stops it.

    Called as ``judge(value, step)``: None to go on, or the reason the trial stops.
    """

    def __init__(
        self, study: str, storage: Optional[str], pruner: str, every: int, after: int, number: int
    ) -> None:
        self.study, self.storage, self.pruner = study, storage, pruner
        self.every, self.after, self.number = max(1, every), after, number
        self._trial: Any = None
        self._unreachable = False

    def __call__(self, value: float, step: int) -> Optional[str]:
        if step % self.every or self._unreachable:
            return None
        trial = self._trial if self._trial is not None else self._open()
        if trial is None:
            return None
        trial.report(float(value), step)
        if not trial.should_prune():
            return None
        return f"pruned at step {step} by the {self.pruner} pruner (objective {value:.6g} there)"

    def _open(self) -> Any:
        """The trial in the study: the search's own object here, else from its storage."""
        from optuna.trial import Trial

        study = _studies.get(self.study)
        try:
            if study is None:
                if self.storage is None:
                    raise LookupError("its study is kept in the memory of the search's process")
                from experiments.sweeps.search import study as studies

                study = studies.reopen(
                    self.storage, self.study, self.pruner, self.every, self.after
                )
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.number
            )
            self._trial = Trial(study, trial_id)
        except Exception as error:
            self._unreachable = True
            log.warning(
                "trial %d cannot reach its study, so it is not pruned: %s", self.number, error
            )
            return None
        return self._trial
