"""Find plugins and collect their tasks.

Plugins come from the `mmserve` entry-point group (built-ins are registered exactly like
third-party packages) and from plain modules named by dotted path. A plugin that fails to
import or to return its tasks is reported and skipped; two plugins claiming one task name is
a start-up error naming both.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from mmserve.plugins import PROJECT_NAME, hookspecs
from mmserve.plugins.task import Task

log = logging.getLogger(__name__)


class DuplicateTaskError(RuntimeError):
    """Two plugins register a task with the same name."""


@dataclass
class PluginInfo:
    name: str
    source: str  # "entry point <dist>" or "module <dotted.path>"
    tasks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Discovery:
    """What discovery found: tasks by name, the plugin that owns each, and every plugin's fate."""

    tasks: dict[str, Task]
    owners: dict[str, str]
    plugins: list[PluginInfo]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def build_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with the mmserve hook specifications (a factory, never global)."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def discover(
    allow: list[str] | None = None, modules: list[str] | None = None, use_entry_points: bool = True
) -> tuple[pluggy.PluginManager, Discovery]:
    """Load plugins and collect their tasks.

    allow: entry-point names to load (None or empty = all); modules: dotted module paths to load
    as plugins in addition to entry points.
    """
    manager = build_plugin_manager()
    infos: list[PluginInfo] = []
    if use_entry_points:
        for ep in entry_points(group=PROJECT_NAME):
            if allow and ep.name not in allow:
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            infos.append(_register(manager, ep.name, f"entry point {ep.value} ({dist})", ep.load))
    for dotted in modules or []:
        infos.append(_register(manager, dotted, f"module {dotted}", lambda d=dotted: importlib.import_module(d)))
    tasks, owners = _collect_tasks(manager, {i.name: i for i in infos})
    return manager, Discovery(tasks=tasks, owners=owners, plugins=infos)


def _register(manager: pluggy.PluginManager, name: str, source: str, load) -> PluginInfo:
    info = PluginInfo(name=name, source=source)
    try:
        if manager.get_plugin(name) is not None:
            raise ValueError(f"a plugin named {name!r} is already loaded")
        manager.register(load(), name=name)
    except Exception as exc:  # a broken plugin must not take the server down
        info.error = f"failed to load: {type(exc).__name__}: {exc}"
        log.error("plugin %s (%s) %s", name, source, info.error)
    return info


def _collect_tasks(manager: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> tuple[dict[str, Task], dict[str, str]]:
    tasks: dict[str, Task] = {}
    owners: dict[str, str] = {}
    for impl in manager.hook.register_tasks.get_hookimpls():
        info = infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, "registered directly"))
        try:
            returned = list(impl.function())
            for task in returned:
                if not isinstance(task, Task) or not task.name:
                    raise TypeError(f"register_tasks returned {task!r}, which is not a named Task")
        except Exception as exc:
            info.error = f"register_tasks failed: {type(exc).__name__}: {exc}"
            log.error("plugin %s %s", impl.plugin_name, info.error)
            continue
        for task in returned:
            if task.name in owners:
                raise DuplicateTaskError(
                    f"task {task.name!r} is registered by two plugins: {owners[task.name]!r} and "
                    f"{impl.plugin_name!r}; disable one (MMSERVE_PLUGINS allow-list) or rename the task"
                )
            tasks[task.name] = task
            owners[task.name] = impl.plugin_name
            info.tasks.append(task.name)
    return tasks, owners
