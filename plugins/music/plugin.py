"""Registers the music task with mmserve (entry point `music`)."""

from __future__ import annotations

from mmserve.plugins import hookimpl
from mmserve.plugins.music.task import MusicTask
from mmserve.plugins.task import Task


@hookimpl
def register_tasks() -> list[Task]:
    return [MusicTask()]
