"""Registers the captioning task with mmserve (entry point `captioning`)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.captioning.task import CaptioningTask
from plugins.task import Task


@hookimpl
def register_tasks() -> list[Task]:
    return [CaptioningTask()]
