"""Registers the speech task with mmserve (entry point `speech`)."""

from __future__ import annotations

from mmserve.plugins import hookimpl
from mmserve.plugins.speech.task import SpeechTask
from mmserve.plugins.task import Task


@hookimpl
def register_tasks() -> list[Task]:
    return [SpeechTask()]
