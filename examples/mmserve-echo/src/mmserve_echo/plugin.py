"""Hook implementations of the echo plugin (thin: the task lives in task.py)."""

from mmserve.plugins import hookimpl
from mmserve_echo.task import EchoTask


@hookimpl
def register_tasks():
    return [EchoTask()]
