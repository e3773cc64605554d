"""What a task is handed: its :class:`TaskContext`, and in it a :class:`Recorder`.

Tasks never import MLflow, nor the runner or the record path: they receive a context
(device, seed and generator, output directory, the ``optim`` node, the run's id, whether a
stop was asked for) and record through its ``recorder``, whose methods are the whole
interface. The runner hands them one that writes the run's journal
(``experiments.record.recorder``); tests and scripts without MLflow may use
:class:`MemoryRecorder`, which keeps everything in plain Python containers. The contract a
task of one's own follows is written in :mod:`experiments.api`, which exports these.

Importing this module does not import torch (a task's report figures, drawn where torch is
not loaded, use :mod:`experiments.api` too).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, Optional, Protocol

from experiments import signals

if TYPE_CHECKING:
    import torch

    from experiments.checkpoints import Checkpoints


class Recorder(Protocol):
    """The recording interface every task receives."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record constant parameters (strings, numbers)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values, optionally at a step; buffered, cheap to call in a loop."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Record descriptive tags (device name, dtype, ...)."""

    def log_figure(self, figure: Any, name: str) -> None:
        """Record a matplotlib figure as a PNG artifact called ``name`` (e.g. ``loss.png``)."""

    def log_text(self, text: str, name: str) -> None:
        """Record a text artifact called ``name`` (e.g. ``table.txt``)."""

    def log_artifact(self, path: str | Path) -> None:
        """Record a file as an artifact."""

    def report(self, value: float, step: int) -> None:
        """The objective so far, at ``step`` of an iterative task (``minimize``'s loss).

        Cheap to call at every step. In a search with a pruner, the search may judge the
        trial hopeless at one of these steps: this then raises ``errors.Pruned``, which the
        task lets through (the run ends KILLED, marked pruned). Elsewhere it does nothing.
        """

    def quiet(self) -> AbstractContextManager[None]:
        """A block the task times: nothing else of the pipeline runs meanwhile.

        ``with ctx.recorder.quiet(): ...`` keeps the recording process idle (no upload, no
        heartbeat) so that it does not compete for the CPU with what the block measures.
        """


@dataclass
class MemoryRecorder:
    """A recorder that keeps everything in memory; for tests and for scripts without MLflow."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    reports: list[tuple[int, float]] = field(default_factory=list)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update(tags)

    def log_figure(self, figure: Any, name: str) -> None:
        self.figures[name] = figure

    def log_text(self, text: str, name: str) -> None:
        self.texts[name] = text

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(Path(path))

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, float(value)))

    def quiet(self) -> AbstractContextManager[None]:
        return nullcontext()

    def last(self, key: str) -> float:
        """The last recorded value of metric ``key``."""
        return self.metrics[key][-1][1]


@dataclass
class TaskContext:
    """What the runner hands to a task besides the task's own config.

    Attributes:
        device: the resolved device to run on.
        recorder: where params, metrics, tags and figures go.
        optim: the composed ``optim`` config node; build it with
            ``experiments.optimizers.build(ctx.optim)``.
        seed: the seed torch, numpy and ``random`` were seeded with before the task.
        output_dir: the run's own directory (Hydra's output directory), for local files.
        log_every: record per-step metrics every this many steps (and the last step).
        generator: a ``torch.Generator`` (CPU) seeded with ``seed``, for the task's own
            random draws (a data split, shuffling) apart from torch's global stream.
        run_of: how the run's id is learned (see :attr:`run_id`); the runner's.
        checkpoints: the run's checkpoints (``experiments.checkpoints.Checkpoints``):
            ``latest()`` to continue from on start (None: a fresh run), ``due(step)`` and
            ``save(step, state)``; None outside the runner (a task saves nothing then).
    """

    device: torch.device
    recorder: Recorder
    optim: Any
    seed: int
    output_dir: Path
    log_every: int = 1
    generator: Optional[torch.Generator] = None
    run_of: Callable[[], Optional[str]] = field(default=lambda: None, repr=False)
    checkpoints: Optional[Checkpoints] = None

    def __post_init__(self) -> None:
        if self.generator is None:
            import torch

            self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run this run records into; None for a run kept offline
        (``tracking.offline=true``: it gets one when ``python -m experiments.sync`` uploads
        it) or outside the runner. Asked while the store still creates the run, it waits."""
        return self.run_of()

    @property
    def stop_requested(self) -> bool:
        """Whether a signal (Ctrl-C, SIGTERM, SIGHUP, a cluster's stop) asked the run to stop.

        Check it at step boundaries: once a task has asked, the first signal waits for it
        (a second one stops the task wherever it is). Save what must survive, then call
        :meth:`stop`. A task that never asks is stopped where the signal finds it.
        """
        return signals.stop_requested()

    def stop(self) -> NoReturn:
        """End the run now, KILLED with the signal's reason (see :attr:`stop_requested`).

        Raises:
            signals.Interrupted: always (a ``KeyboardInterrupt``: let it through).
        """
        signals.stop_now()
        raise RuntimeError("ctx.stop() called with no stop requested (see ctx.stop_requested)")
