"""The task registry: a task's name (or alias) -> its :class:`Task` object.

The built-in tasks register on first use (their modules import lazily what they need,
so that reading a config does not import torch); a plug-in task calls
:func:`register_task` with an instance of its own :class:`Task` subclass.
"""

from __future__ import annotations

import importlib

from liandan.errors import ConfigError
from liandan.tasks.base import Task

BUILTIN = ("liandan.tasks.classify", "liandan.tasks.segment", "liandan.tasks.detect.task")
_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` under its name and aliases; a second task of the same name replaces it."""
    _TASKS[task.name] = task
    for alias in task.aliases:
        _ALIASES[alias] = task.name
    return task


def _load_builtins() -> None:
    for module in BUILTIN:  # each registers itself on its first import
        importlib.import_module(module)


def task_names() -> list[str]:
    """The registered tasks' names, sorted."""
    _load_builtins()
    return sorted(_TASKS)


def resolve_task_name(name: str) -> str:
    """A task's name from its name or an alias (``segmentation`` -> ``segment``)."""
    _load_builtins()
    name = _ALIASES.get(name, name)
    if name not in _TASKS:
        raise ConfigError(
            f"unknown task {name!r}",
            where="task",
            hint=f"one of: {', '.join(task_names())}",
        )
    return name


def get_task(name: str | Task) -> Task:
    """The registered task called ``name`` (or one of its aliases)."""
    if isinstance(name, Task):
        return name
    return _TASKS[resolve_task_name(str(name))]
