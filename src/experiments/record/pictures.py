"""Which pickled figures the recording process may draw: matplotlib's, and nothing else.

A live run sends its figures to its recording process pickled (drawing one takes a tenth
of a second or more, off the task's path: ``record.service.figures``). A figure whose
pickle names a class or function of any other package (a task's own formatter, artist or
colormap) is not sent: the recording process would import that package to unpickle it,
or fail to, and the picture would be missing. The run's process draws such a figure
itself (:func:`sendable`). The recording process unpickles with :class:`Unpickler`, which
refuses every other global, so a pickle on its pipe names nothing it would import.

Nothing here imports MLflow or torch.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any

# The packages a matplotlib Figure's pickle names: matplotlib and its own dependencies, and
# the standard library's containers and reconstructors.
SAFE = frozenset(
    {
        "matplotlib",
        "mpl_toolkits",
        "numpy",
        "PIL",
        "cycler",
        "kiwisolver",
        "fontTools",
        "dateutil",
        "pyparsing",
        "contourpy",
        "builtins",
        "copyreg",
        "collections",
        "_collections_abc",
        "functools",
        "_codecs",
        "codecs",
        "weakref",
        "_weakrefset",
        "datetime",
        "decimal",
        "fractions",
        "numbers",
        "enum",
        "types",
        "pathlib",
        "io",
        "_io",
        "math",
        "array",
        "operator",
        "re",
        "zoneinfo",
        "uuid",
    }
)


def pickled(figure: Any) -> bytes | None:
    """``figure`` pickled, if it can be and holds only what :data:`SAFE` packages define;
    else None (then the run's process draws it itself)."""
    buffer = io.BytesIO()
    try:
        _Checking(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(figure)
    except Exception:  # another package's object, or a lambda formatter: not picklable here
        return None
    return buffer.getvalue()


class _Foreign(pickle.PicklingError):
    """An object of a package the recording process does not load for a figure."""


class _Checking(pickle.Pickler):
    """Pickles as usual, refusing any object (or class, or function) of another package."""

    def reducer_override(self, obj: Any) -> Any:
        by_name = isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType))
        module = getattr(obj, "__module__", None) if by_name else type(obj).__module__
        if module is not None and not _safe(str(module)):
            raise _Foreign(f"{module} is not a package a figure is drawn with")
        return NotImplemented


class Unpickler(pickle.Unpickler):
    """Unpickles a figure, refusing any global outside :data:`SAFE`."""

    def find_class(self, module: str, name: str) -> Any:
        if not _safe(module):
            raise pickle.UnpicklingError(f"{module}.{name} is not matplotlib's: not loaded here")
        return super().find_class(module, name)


def load(data: bytes) -> Any:
    """A figure from its pickle (:class:`Unpickler`)."""
    return Unpickler(io.BytesIO(data)).load()


def _safe(module: str) -> bool:
    return module.split(".", 1)[0] in SAFE
