"""Tasks: what differs between classification, segmentation and the tasks to come.

Each task is one module of this package with one :class:`~liandan.tasks.base.Task`
subclass, registered by name. Shared machinery (data, engine, predict, report, export,
plan, tune) asks the task for what it needs instead of testing the task's name; a new
task is a new module here plus its registration (see ``docs/tasks.md``).

>>> from liandan.tasks import get_task, task_names
>>> task_names()
['classify', 'detect', 'segment']
>>> get_task("segmentation").name
'segment'
"""

from __future__ import annotations

from liandan.tasks.base import Task
from liandan.tasks.registry import get_task, register_task, resolve_task_name, task_names

__all__ = ["Task", "get_task", "register_task", "resolve_task_name", "task_names"]
