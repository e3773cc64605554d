"""The task API: what a task of your own provides, and what it is handed.

A task is one :class:`Task`, registered under a name; ``python -m experiments task=<name>``
then runs it exactly as it runs the built-in ``minimize``, ``derivative`` and ``matmul``
(which register the same way): single runs, sweeps on every launcher, the search with
pruning, Slurm, ``rerun`` and ``report --compare``, a team's server. Everything a run records
goes through the :class:`TaskContext` it is handed; a task never imports MLflow.

**Registering.** An installed package names its task in the entry-point group
``experiments.tasks`` of its ``pyproject.toml``::

    [project.entry-points."experiments.tasks"]
    digits = "experiments_digits.task:TASK"

and ships its config as ``<package>/conf/task/<name>.yaml`` (its defaults list starts with
``/<name>_schema@_here_``, the settings' dataclass, and may set any of its fields; presets
in ``<package>/conf/experiment/`` are found too). A module that is not packaged (a file in
your project, importable from where you run) is named in the environment instead:
``EXPERIMENTS_TASKS="mytask=mymodule:TASK"`` (several: separated by commas); its YAML goes
in a config directory of yours (``--config-dir conf``, or ``hydra.searchpath``), or is left
out: a task without a YAML file composes from its dataclass's defaults. Only the task a
command selects is imported.

**The contract** (:class:`Task`'s fields):

- ``name``: ``task=<name>``; the MLflow experiment its runs go to by default.
- ``settings``: a dataclass of its settings, the ``task.*`` keys: typed, so a wrong key or
  type fails when Hydra composes the config; value checks in its ``__post_init__`` raise
  :class:`~experiments.errors.ConfigError` naming ``task.<key>`` and the value.
- ``run(cfg, ctx) -> float | None``: does the work, records through ``ctx.recorder`` and
  returns its objective (what a sweep's summary ranks and a search optimises). ``run`` may be
  the function or its name, ``"module:function"``, imported only when the task runs: the
  module the entry point names is then read cheaply by every part (the report's process,
  which has no torch, included), as the built-in tasks' are. So may ``prepare`` and
  ``resolved_params``.
- ``objective``: the objective's name; it is recorded as the metric ``objective/<name>``.
- ``direction``: ``"minimize"`` or ``"maximize"``: which objective is best in a sweep's
  summary, and what a search asks of its study.

Optional:

- ``uses_optimizer``: the task builds an optimizer from the ``optim`` group
  (``experiments.optimizers.build(ctx.optim)``); its runs record ``optim.*`` as params.
- ``prepare()``: imports the task needs, done while the tracking store opens.
- ``resolved_params(cfg) -> dict``: settings the task resolves itself, recorded as params.
- ``threads``: the settings key that sets the CPU threads the task uses (matmul's
  ``threads``); ``environment.json`` records those as torch's threads.
- ``verdict``: how a rerun is judged: :class:`Exact` (every result and per-step history bit
  for bit; the default), :class:`Tolerance` (within ``rel`` and ``abs``), or :class:`Timing`
  (the objective is a time; the same within its measured spread, the metric ``spread``).
- ``report``: ``"module:function"``, the task's own figures and tables in a sweep's report,
  called as ``function(runs)`` with :class:`ReportRun` views of the runs (FINISHED ones
  and the others), returning ``{file name: matplotlib Figure or text}``. It runs where the
  report is made, a process without torch: the module must not import it.
- ``table``: names of results (``result/<name>``) shown beside the objective in the report's
  table of runs.

Every task's sweep report has, with no code of its own, the objective against each setting
the runs vary, and the objective's history per run where the task recorded one
(``ctx.recorder.report`` or ``log_metrics`` at steps).

**What it is handed**, :class:`TaskContext`: the device, the recorder, the ``optim`` node, the
seed (torch, numpy and ``random`` are seeded from it before ``run``; ``ctx.generator`` is a
``torch.Generator`` seeded from it), the run's directory for its files, the run's MLflow id
(``ctx.run_id``), and ``ctx.stop_requested``: a signal (Ctrl-C, a cluster's SIGTERM) asked
the run to stop. A task that looks at it stops at its next step boundary, where its state is
consistent (``ctx.stop()`` ends the run KILLED with the signal's reason); a task that never
looks is stopped where the signal finds it, as before.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Mapping, Optional, Union

from experiments.errors import ConfigError
from experiments.tasks.context import MemoryRecorder, Recorder, TaskContext

__all__ = [
    "Exact",
    "MemoryRecorder",
    "Recorder",
    "ReportRun",
    "Task",
    "TaskContext",
    "Timing",
    "Tolerance",
    "Verdict",
]

DIRECTIONS = ("minimize", "maximize")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Exact:
    """A rerun reproduced when every result and per-step history is equal bit for bit."""

    def describe(self) -> str:
        return "exact"


@dataclass(frozen=True)
class Tolerance:
    """A rerun reproduced when every value is within ``abs + rel * |value|`` of the first's.

    Args:
        rel: the relative tolerance.
        abs: the absolute tolerance.
    """

    rel: float = 1e-6
    abs: float = 0.0

    def __post_init__(self) -> None:
        if not (self.rel >= 0 and self.abs >= 0):
            raise ValueError(f"Tolerance(rel={self.rel}, abs={self.abs}): both must be >= 0")

    def describe(self) -> str:
        return f"tolerance rel={self.rel:g} abs={self.abs:g}"


@dataclass(frozen=True)
class Timing:
    """The objective is a time: a rerun reproduced when the two differ by no more than the
    wider of their measured spreads (the result ``spread``, e.g. an IQR), or, over several
    reruns (``rerun --repeat``), when it lies within theirs."""

    spread: str = "time_iqr_ms"

    def describe(self) -> str:
        return f"timing spread=result/{self.spread}"


Verdict = Union[Exact, Tolerance, Timing]


def verdict_from(text: Optional[str]) -> Optional[Verdict]:
    """The verdict a run's ``verdict`` tag names (:meth:`describe`'s words); None if none."""
    if not text:
        return None
    kind, _, rest = text.partition(" ")
    values = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    if kind == "exact":
        return Exact()
    if kind == "tolerance":
        return Tolerance(float(values.get("rel", 0)), float(values.get("abs", 0)))
    if kind == "timing":
        return Timing(values.get("spread", "result/time_iqr_ms").removeprefix("result/"))
    return None


@dataclass(frozen=True)
class Task:
    """A task, as it registers (see the module's docstring for each field)."""

    name: str
    settings: type
    run: Union[Callable[[Any, TaskContext], Optional[float]], str]
    objective: str
    direction: str = "minimize"
    uses_optimizer: bool = False
    prepare: Union[Callable[[], None], str, None] = None
    resolved_params: Union[Callable[[Any], Mapping[str, Any]], str, None] = None
    threads: Optional[str] = None
    verdict: Verdict = field(default_factory=Exact)
    report: Optional[str] = None
    table: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ConfigError(f"{where}: a name is letters, digits, _ and -, starting a letter")
        if not (isinstance(self.settings, type) and is_dataclass(self.settings)):
            raise ConfigError(f"{where}: settings must be a dataclass, got {self.settings!r}")
        for key in ("run", "prepare", "resolved_params"):
            value = getattr(self, key)
            if value is None and key != "run":
                continue
            if not (callable(value) or (isinstance(value, str) and REFERENCE.match(value))):
                raise ConfigError(f"{where}: {key} must be a function or 'module:function'")
        if not isinstance(self.objective, str) or not self.objective or "/" in self.objective:
            raise ConfigError(f"{where}: objective must be a name, e.g. 'loss': {self.objective!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"{where}: direction is minimize or maximize: {self.direction!r}")
        if not isinstance(self.verdict, (Exact, Tolerance, Timing)):
            raise ConfigError(f"{where}: verdict must be Exact(), Tolerance() or Timing()")
        if self.report is not None and not REFERENCE.match(str(self.report)):
            raise ConfigError(f"{where}: report must be 'module:function', got {self.report!r}")
        names = {item.name for item in fields(self.settings)}
        if self.threads is not None and self.threads not in names:
            raise ConfigError(f"{where}: threads={self.threads!r} is not one of its settings")
        object.__setattr__(self, "table", tuple(self.table))

    @property
    def objective_key(self) -> str:
        """The metric that holds the objective: ``objective/<objective>``."""
        return f"objective/{self.objective}"

    def function(self, key: str = "run") -> Optional[Callable[..., Any]]:
        """``run`` (or ``prepare``, ``resolved_params``: ``key``), imported where it is named
        by ``"module:function"``; None where the task has none."""
        value = getattr(self, key)
        if value is None or callable(value):
            return value
        return load_reference(value, f"task {self.name!r}: {key}")

    def better(self, a: float, b: float) -> bool:
        """Whether objective ``a`` is better than ``b`` in this task's direction."""
        return a > b if self.direction == "maximize" else a < b


def load_reference(reference: str, what: str) -> Any:
    """The object ``"module:name"`` names; a failure is a ConfigError naming ``what``."""
    module_name, _, name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, name)
    except Exception as error:  # an import error of the user's module, or a missing name
        raise ConfigError(f"{what}={reference}: {type(error).__name__}: {error}") from None


@dataclass
class ReportRun:
    """One run as a task's report figures see it: plain data read from the store.

    Attributes:
        run_id: the MLflow run's id.
        name: its name (a sweep's job: what the sweep varies, ``optim=adam lr=0.1``).
        status: FINISHED, FAILED or KILLED.
        params: its params (``task.*``, ``optim.*``, ``device``, ``seed``), as strings.
        metrics: the last value of each metric.
        tags: its tags.
        history: ``history(key)``: every ``(step, value)`` of a metric, in step order.
    """

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    history: Callable[[str], list[tuple[int, float]]] = field(repr=False, default=lambda key: [])
