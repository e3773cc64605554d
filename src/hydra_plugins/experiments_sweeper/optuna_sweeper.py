"""``hydra/sweeper=optuna``: a search with Optuna, its study stored beside the runs.

Its settings (``hydra.sweeper.*``) are :class:`OptunaSweeperConf`'s; the search is
``experiments.sweeps.search.loop``. Importing this module (Hydra's plugin scan, at every
command) imports neither Optuna nor torch.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it
# is in sys.modules, where dataclasses would look its string annotations up.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SamplerConf:
    """``hydra.sweeper.sampler``: tpe, random, grid or qmc, and its seed."""

    name: str = "tpe"
    seed: Optional[int] = 0


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper.*`` of ``hydra/sweeper=optuna``."""

    _target_: str = "hydra_plugins.experiments_sweeper.optuna_sweeper.OptunaSweeper"
    # null: the task's (Task.direction: minimize for the built-in tasks); or minimize, maximize
    direction: Optional[str] = None
    n_trials: int = 20  # completed trials the study should hold: a rerun tops it up
    n_jobs: int = 1  # trials per batch, run together by the launcher
    max_failure_rate: float = 0.0  # above this share of failed trials in a batch, stop
    study_name: Optional[str] = None  # default: the command line's overrides
    # default: EXPERIMENTS_STUDY_STORAGE, else beside the tracking store; or a URL, or memory
    storage: Optional[str] = None
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: str = "none"  # or median, hyperband: stop hopeless trials at a reported step
    prune_every: int = 10  # a trial reports its objective to the pruner every N steps
    prune_after: int = 0  # no trial is pruned before this step (its early steps mislead)
    params: Optional[Dict[str, Any]] = None  # the search space, in Hydra's sweep syntax


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="experiments"
)


class OptunaSweeper(Sweeper):
    """Hydra's side of a search: its settings and launcher; the loop does the rest."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> None:
        from experiments.sweeps.search import loop

        assert self.config is not None and self.launcher is not None
        loop.search(self.config, self.launcher, self.settings, arguments)
