"""Registers the captioning task with mmserve (entry point `captioning`)."""

from __future__ import annotations

from mmserve.plugins import hookimpl
from mmserve.plugins.captioning.task import CaptioningTask
from mmserve.plugins.task import Task


@hookimpl
def register_tasks() -> list[Task]:
    return [CaptioningTask()]
