"""What a task may record, independent of any tracking backend.

Tasks never import MLflow: they receive a :class:`Recorder` and call these methods. The
runner supplies an MLflow-backed one (``tracking.MlflowRecorder``); tests may use
:class:`MemoryRecorder`, which keeps everything in plain Python containers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol


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


@dataclass
class MemoryRecorder:
    """A recorder that keeps everything in memory; for tests and for scripts without MLflow."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)

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

    def last(self, key: str) -> float:
        """The last recorded value of metric ``key``."""
        return self.metrics[key][-1][1]
