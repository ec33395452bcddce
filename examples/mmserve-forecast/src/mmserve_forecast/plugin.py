"""Hook implementations of the forecast plugin (thin: the task lives in task.py)."""

from mmserve.plugins import hookimpl
from mmserve_forecast.task import ForecastTask


@hookimpl
def register_tasks():
    return [ForecastTask()]
