"""The runner's recorder: what a task records, appended to the run's journal.

A task records through the :class:`~experiments.tasks.context.Recorder` interface; this
implementation appends each record to the run's journal (:mod:`.journal`), from where the
recording process uploads it. It imports nothing of MLflow and nothing of the tasks.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from experiments.errors import Pruned
from experiments.names import PRUNED_TAG

if TYPE_CHECKING:
    from experiments.record.journal import Writer

# MLflow refuses longer values; a value that long is cut, and says so.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
FIGURE_DPI = 90
_SPECIAL = {"nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}  # as journals spell them


class JournalRecorder:
    """Appends what a task records to the run's journal; cheap enough for a task's loop.

    A metric record is formatted directly (about 3 µs, a third of ``json.dumps``): the
    loop of a run that records every step pays little more than one that records none.
    Files (texts, figures) are written into the run's directory and journaled by name.

    Args:
        writer: the run's journal (``journal.Writer``).
        directory: the run's output directory.
        quiet: the live run's ``quiet`` (keeps the recording process idle); none offline.
        send_figure: hands a figure to the recording process to draw into the given file
            (a live run); returns False when it cannot, and the figure is drawn here.

    Attributes:
        judge: a search's judge of this trial (``sweeps.search.trial``), given each
            reported value and step; it returns why the trial stops there, or None. Unset,
            ``report`` does nothing.
        recorded: a run continued from a checkpoint: by metric, the last step its earlier
            attempts recorded. The steps the task runs again from its checkpoint up to
            there are not recorded twice: each step of a metric's history is recorded once.
    """

    judge: Optional[Callable[[float, int], Optional[str]]] = None
    recorded: Optional[dict[str, int]] = None

    def __init__(
        self,
        writer: Writer,
        directory: Path,
        quiet: Optional[Callable[[], AbstractContextManager[None]]] = None,
        send_figure: Optional[Callable[[Any, Path], bool]] = None,
    ) -> None:
        self._append = writer.append
        self._write = writer.write_line
        self.directory = Path(directory)
        self._quiet = quiet
        self._send_figure = send_figure
        self._names: dict[str, str] = {}  # metric name -> its JSON string

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {str(key): _cut(value, MAX_PARAM_LENGTH) for key, value in params.items()}
        self._append({"type": "params", "params": values})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.recorded:
            metrics = self._not_replayed(metrics, 0 if step is None else int(step))
            if not metrics:
                return
        names = self._names
        fields = []
        for key, value in metrics.items():
            name = names.get(key)
            if name is None:
                name = names[key] = json.dumps(str(key))
            number = float(value)
            text = repr(number) if -math.inf < number < math.inf else _SPECIAL[str(number)]
            fields.append(f"{name}:{text}")
        stamp = int(time.time() * 1000)
        self._write(
            f'{{"type":"metrics","step":{0 if step is None else int(step)},'
            f'"values":{{{",".join(fields)}}},"time":{stamp}}}\n'.encode()
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {str(key): _cut(value, MAX_TAG_LENGTH) for key, value in tags.items()}
        self._append({"type": "tags", "tags": values})

    def log_figure(self, figure: Any, name: str) -> None:
        path = self._file(name)
        # Drawing a figure takes a tenth of a second or more: a live run's recording process
        # does it, from the figure sent over its pipe (never through a file: see
        # record.service.figures). The artifact line says a figure is on its way.
        if self._send_figure is None or not self._send_figure(figure, path):
            figure.savefig(path, dpi=FIGURE_DPI)
            self.log_artifact(path, Path(name).parent)
            return
        folder = str(Path(name).parent)
        self._append(
            {
                "type": "artifact",
                "file": str(path.relative_to(self.directory)),
                "dir": folder if folder != "." else None,
                "figure": True,
            }
        )

    def log_text(self, text: str, name: str) -> None:
        path = self._file(name)
        path.write_text(text, encoding="utf-8")
        self.log_artifact(path, Path(name).parent)

    def log_artifact(self, path: str | Path, artifact_dir: str | Path | None = None) -> None:
        """Record a file; ``artifact_dir`` is its directory among the run's artifacts."""
        path = Path(path)
        try:
            file = str(path.resolve().relative_to(self.directory.resolve()))
        except ValueError:
            file = str(path.resolve())
        folder = str(artifact_dir) if artifact_dir not in (None, "", Path(".")) else None
        self._append({"type": "artifact", "file": file, "dir": folder})

    def _not_replayed(self, metrics: Mapping[str, float], step: int) -> Mapping[str, float]:
        recorded = self.recorded or {}
        return {key: value for key, value in metrics.items() if step > recorded.get(key, -1)}

    def log_checkpoint(self, path: str | Path) -> None:
        """Record a checkpoint's directory: the store keeps the latest one, as the artifact
        ``checkpoint/`` (one superseded before it is uploaded is not)."""
        self._append(
            {
                "type": "artifact",
                "file": str(Path(path).resolve()),
                "dir": "checkpoint",
                "checkpoint": True,
            }
        )

    def report(self, value: float, step: int) -> None:
        if self.judge is None:
            return
        reason = self.judge(value, step)
        if reason is not None:
            self.set_tags({PRUNED_TAG: str(step)})
            raise Pruned(reason)

    def quiet(self) -> AbstractContextManager[None]:
        return self._quiet() if self._quiet is not None else nullcontext()

    def _file(self, name: str) -> Path:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _cut(value: Any, limit: int) -> str:
    text = "null" if value is None else str(value)
    if len(text) > limit:
        return text[: limit - 15] + "...(truncated)"
    return text
