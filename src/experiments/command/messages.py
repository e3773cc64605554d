"""Hydra's and OmegaConf's errors, and the project's own, each in one line.

Hydra prints composition errors over several lines and job errors with a traceback; the
command line reports every expected error as one ``error: ...`` line that keeps the key and
the value it names (:func:`one_line`).
"""

from __future__ import annotations

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from experiments.errors import ConfigError


def one_line(error: BaseException) -> str:
    """A single-line description of an expected error, keeping the key and value it names."""
    checked = _config_error_within(error)
    if checked is not None:
        return one_line(checked)  # a resolver's check (${gpus:${device}}), in its own words
    if isinstance(error, MissingConfigException) and _is_plugin(error):
        return (
            f"{_lines(error)[0]}: the launchers and sweepers are an optional extra; "
            "install them with: pip install 'experiments[sweeps]'"
        )
    task = _missing_task(error)
    if task is not None:
        return task
    if isinstance(error, MissingConfigException) and error.options:
        lines = _lines(error)
        found = next((line for line in lines if "Could not find" in line), lines[0])
        return f"{found}; available options{_group_of(error)}: {', '.join(sorted(error.options))}"
    text = _lines(error)
    if isinstance(error, OverrideParseException) and len(text) > 1:
        return (
            f"{text[0]}: {text[1]} (values with parentheses, commas or quotes need quoting, "
            "e.g. 'task.expr=\"sin(x) * y\"')"
        )
    first = next((line for line in text if not line.startswith("To append")), "")
    if first.endswith(":") and len(text) > 1:  # the reason is on the next line
        first = f"{first} {text[text.index(first) + 1]}"
    cause = error.__cause__
    if isinstance(error, HydraException) and isinstance(cause, OmegaConfBaseException):
        detail = _lines(cause)[0] if _lines(cause) else ""
        first = f"{first.rstrip('.')}: {detail}" if detail else first
    return first or type(error).__name__


def _missing_task(error: BaseException) -> str | None:
    """A task that Hydra could not find, in the registry's words: ``task=foo`` with no such
    task, or a task's YAML (in a config directory of one's own) that extends the schema of a
    task no package registers."""
    if not isinstance(error, MissingConfigException):
        return None
    from experiments.tasks import registry

    missing = (error.missing_cfg_file or "").strip("/")
    if missing.startswith("task/"):
        return str(registry.unknown(missing[len("task/") :]))
    if missing.endswith("_schema") and "/" not in missing:
        name = missing[: -len("_schema")]
        if name not in registry.names():
            return (
                f"task={name}: its config extends {missing}, but no task {name!r} is "
                f"registered; the tasks found: {', '.join(registry.names()) or 'none'}"
            )
    return None


def _config_error_within(error: BaseException) -> ConfigError | None:
    """The ConfigError that Hydra or OmegaConf wrapped (a resolver raised it), if any."""
    seen: BaseException | None = error
    while isinstance(seen, (HydraException, OmegaConfBaseException)):
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, ConfigError) and seen is not error else None


PLUGINS = ("joblib", "submitit_local", "submitit_slurm", "experiments_slurm", "optuna")


def _is_plugin(error: MissingConfigException) -> bool:
    group, _, name = (error.missing_cfg_file or "").rpartition("/")
    return group in ("hydra/launcher", "hydra/sweeper") and name in PLUGINS


def _lines(error: BaseException) -> list[str]:
    return [line.strip() for line in str(error).splitlines() if line.strip()]


def _group_of(error: MissingConfigException) -> str:
    missing = error.missing_cfg_file or ""
    return f" in '{missing.rsplit('/', 1)[0]}'" if "/" in missing else ""
