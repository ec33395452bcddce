"""Registers the action task with mmserve (entry point `action`)."""

from __future__ import annotations

from mmserve.plugins import hookimpl
from mmserve.plugins.action.task import ActionTask
from mmserve.plugins.task import Task


@hookimpl
def register_tasks() -> list[Task]:
    return [ActionTask()]
