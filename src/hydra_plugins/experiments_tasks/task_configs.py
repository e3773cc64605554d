"""Registered tasks, as Hydra composes them: their configs found, their schemas served lazily.

Two plugins, found by Hydra's scan of ``hydra_plugins``:

- :class:`TaskSearchPath` appends to every config search path (the command line's, the
  compose API's) the config directory of each package that registers a task
  (``<package>/conf``: ``task/<name>.yaml``, presets in ``experiment/``), found without
  importing the package, and this plugin's own source.
- :class:`TaskConfigs` (``experiments-tasks://``) serves ``<name>_schema``, the settings'
  dataclass a task's YAML extends (``- /<name>_schema@_here_``), importing that task, and
  only when Hydra composes it: so a command imports the task it selects and no other. It
  also serves ``task/<name>`` for a task whose package ships no YAML: its settings'
  defaults. Its options are listed from the registry's names, which import nothing.

Importing this module (Hydra's plugin scan, at every command) imports no task.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it
# is in sys.modules.
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

SCHEME = "experiments-tasks"
SUFFIX = "_schema"
PROVIDER = "experiments"


class TaskSearchPath(SearchPathPlugin):
    """Where registered tasks' configs are: their packages' ``conf``, then their schemas."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from experiments.tasks import registry

        try:
            directories = registry.config_dirs()
        except registry.TaskError:
            directories = []  # a bad EXPERIMENTS_TASKS: said when a task is selected
        for directory in directories:
            search_path.append(provider=PROVIDER, path=f"file://{directory}")
        search_path.append(provider=PROVIDER, path=f"{SCHEME}://")


class TaskConfigs(ConfigSource):
    """``<name>_schema`` and ``task/<name>`` of every registered task (see the module)."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        from experiments.tasks import registry

        path = _strip(config_path)
        name = _schema_name(path)
        if name is not None:
            task = registry.load(name)  # imports the task: it is being composed
            node = OmegaConf.structured(registry.settings_of(task))
        elif path.startswith("task/") and path[5:] in _names():
            node = OmegaConf.create({"defaults": [f"/{path[5:]}{SUFFIX}@_here_", "_self_"]})
        else:
            raise ConfigLoadError(f"no config {config_path} among the registered tasks")
        return ConfigResult(
            config=node, path=f"{SCHEME}://", provider=PROVIDER, header={"package": None}
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return _strip(config_path) in ("", "task")

    def is_config(self, config_path: str) -> bool:
        path = _strip(config_path)
        if path.startswith("task/"):
            return path[5:] in _names()
        return _schema_name(path) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        path = _strip(config_path)
        found: List[str] = []
        if path == "" and results_filter in (None, ObjectType.GROUP):
            found.append("task")
        if path == "" and results_filter in (None, ObjectType.CONFIG):
            found += [f"{name}{SUFFIX}" for name in _names()]
        if path == "task" and results_filter in (None, ObjectType.CONFIG):
            found += _names()
        return sorted(found)


def _names() -> List[str]:
    from experiments.tasks import registry

    try:
        return registry.names()
    except registry.TaskError:
        return []


def _strip(config_path: str) -> str:
    path = config_path.strip("/")
    return path[: -len(".yaml")] if path.endswith(".yaml") else path


def _schema_name(path: str) -> Optional[str]:
    if "/" in path or not path.endswith(SUFFIX):
        return None
    name = path[: -len(SUFFIX)]
    return name if name in _names() else None
