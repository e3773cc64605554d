"""Which tasks exist, and loading the one a command selects.

Tasks register by name (see :mod:`experiments.api`): installed packages in the entry-point
group ``experiments.tasks`` (the built-in three included, in this package's own
``pyproject.toml``), modules of one's own in the environment's ``EXPERIMENTS_TASKS``
(``name=module:attribute``, separated by commas). The names are read from the packages'
metadata, which imports nothing; a task's module is imported when that task is loaded, and
only then. So a task package that is broken breaks only the commands that select it, each
with one line that names the package and its error.

Also here: where the registering packages keep their configs (``<package>/conf``, found
without importing the package), and each task's settings as Hydra composes them (its
dataclass, given a ``name`` field where it has none).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Optional

from experiments.errors import ConfigError

GROUP = "experiments.tasks"  # the entry-point group tasks register in
ENV = "EXPERIMENTS_TASKS"  # name=module:attribute, ...: tasks that are not packaged
CONFIG_DIR = "conf"  # where a registering package keeps its configs (task/<name>.yaml)
OWN = "experiments"  # this package: its configs are the command's own


class TaskError(ConfigError):
    """A task that cannot be selected: unknown, registered twice, broken, not a Task."""


@dataclass(frozen=True)
class Declaration:
    """One registration of a task name: where it points, and who made it."""

    name: str
    reference: str  # module:attribute
    origin: str  # the distribution (its name and version), or the environment variable
    package: Optional[str] = None  # the distribution's name (None: EXPERIMENTS_TASKS)

    @property
    def module(self) -> str:
        return self.reference.partition(":")[0]


def declarations() -> dict[str, list[Declaration]]:
    """Every registration, by task name (entry points first, then ``EXPERIMENTS_TASKS``)."""
    found: dict[str, list[Declaration]] = {}
    points = _entry_points(tuple(sys.path))
    for declaration in (*points, *_environment(os.environ.get(ENV, ""))):
        found.setdefault(declaration.name, []).append(declaration)
    return found


def names() -> list[str]:
    """The names of every registered task, sorted."""
    return sorted(declarations())


def load(name: str) -> Any:
    """The :class:`~experiments.api.Task` registered as ``name``, its module imported.

    Raises:
        TaskError: no task has that name (the line lists those found), two packages
            register it, its module fails to import, or what it names is not a Task.
    """
    return _load(name, os.environ.get(ENV, ""))


def find(name: str) -> Any:
    """The task registered as ``name``, or None when none is; a broken one raises."""
    return load(name) if name in declarations() else None


def unknown(name: str) -> TaskError:
    """The one-line error for ``task=<name>`` when no task has that name."""
    found = ", ".join(names()) or "none"
    return TaskError(f"task={name}: no such task; the tasks found: {found}")


@cache
def _load(name: str, environment: str) -> Any:
    from experiments.api import Task

    found = declarations().get(name)
    if not found:
        raise unknown(name)
    if len(found) > 1:
        ordered = sorted(found, key=lambda d: d.origin)
        which = " and ".join(f"{d.origin} ({d.reference})" for d in ordered)
        raise TaskError(f"task={name}: registered twice, by {which}: keep one")
    (declaration,) = found
    module_name, _, attribute = declaration.reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the package's own error, whatever it is
        raise TaskError(
            f"task={name}: {declaration.origin} failed to import {module_name}: "
            f"{type(error).__name__}: {error}"
        ) from None
    task = getattr(module, attribute, None) if attribute else module
    if not isinstance(task, Task):
        raise TaskError(
            f"task={name}: {declaration.reference} ({declaration.origin}) is not an "
            f"experiments.api.Task but {type(task).__name__}"
        )
    if task.name != name:
        raise TaskError(
            f"task={name}: {declaration.reference} ({declaration.origin}) is the task "
            f"{task.name!r}; register it under that name"
        )
    return task


def distribution_of(name: str) -> Optional[str]:
    """The distribution that registers task ``name`` (None: not a package's)."""
    found = declarations().get(name) or []
    return found[0].package if len(found) == 1 else None


def config_dirs() -> list[Path]:
    """The config directories (``<package>/conf``) of the packages that register tasks,
    this one's left out (its configs are the command's own), found without importing."""
    directories = []
    for found in declarations().values():
        for declaration in found:
            if declaration.package == OWN:
                continue
            top = declaration.module.split(".")[0]
            try:
                spec = importlib.util.find_spec(top)  # a top-level package: not executed
            except (ImportError, ValueError):
                continue
            for location in (spec.submodule_search_locations or []) if spec else []:
                candidate = Path(location) / CONFIG_DIR
                if candidate.is_dir() and candidate not in directories:
                    directories.append(candidate)
    return directories


def settings_of(task: Any) -> type:
    """The dataclass Hydra composes ``task.*`` against: the task's settings, with a ``name``
    field (the task's name) added where they have none, in a subclass of their own."""
    if any(item.name == "name" for item in dataclasses.fields(task.settings)):
        return task.settings
    return _named(task.settings, task.name)


@cache
def _named(settings: type, name: str) -> type:
    named = dataclasses.make_dataclass(
        settings.__name__, [("name", str, dataclasses.field(default=name))], bases=(settings,)
    )
    named.__module__ = settings.__module__
    named.__qualname__ = settings.__qualname__
    return named


def forget() -> None:
    """Read the registrations afresh (a package installed or removed meanwhile: tests)."""
    _entry_points.cache_clear()
    _load.cache_clear()


@lru_cache(maxsize=8)
def _entry_points(path: tuple[str, ...]) -> list[Declaration]:
    found = []
    for point in importlib.metadata.entry_points(group=GROUP):
        dist = getattr(point, "dist", None)
        package = dist.metadata["Name"] if dist is not None else None
        origin = f"{package} {dist.version}" if dist is not None else f"entry point {point.name}"
        found.append(Declaration(point.name, point.value, origin, package))
    return _unique(found)


def _unique(found: list[Declaration]) -> list[Declaration]:
    """One declaration per distribution and name (an editable install may list one twice)."""
    seen, kept = set(), []
    for declaration in found:
        key = (declaration.name, declaration.package, declaration.reference)
        if key not in seen:
            seen.add(key)
            kept.append(declaration)
    return kept


def _environment(text: str) -> list[Declaration]:
    found = []
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        name, _, reference = item.partition("=")
        if not name.strip() or ":" not in reference:
            raise TaskError(f"{ENV}={text}: {item!r} is not name=module:attribute")
        found.append(Declaration(name.strip(), reference.strip(), ENV))
    return found
