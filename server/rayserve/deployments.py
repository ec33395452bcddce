"""Names and options of mmserve's Ray Serve deployments.

A leaf module: the backend that deploys them (`ray_backend.py`) and the config writer
(`serve_config.py`) both read it, and neither imports the other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mmserve.registry.discovery import discover
from mmserve.server.settings import Settings, TaskSettings

IMPORT_PATH = "mmserve.server.rayserve.ray_backend:build_app"
INGRESS_DEPLOYMENT = "ingress"


class AppArgs(BaseModel):
    """The builder's arguments (`args` of the application in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict, description="mmserve settings (the YAML layout); the environment fills the rest"
    )


def task_deployment_name(task: str) -> str:
    return f"task-{task}"


def task_deployment_options(task: str, task_settings: TaskSettings) -> dict[str, Any]:
    """Serve options of a task's deployment: in code and, verbatim, in the written config."""
    options: dict[str, Any] = {"name": task_deployment_name(task)}
    if task_settings.autoscaling is not None:
        scaling = task_settings.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = task_settings.num_replicas or 1
    options["max_ongoing_requests"] = task_settings.max_ongoing_requests
    options["max_queued_requests"] = task_settings.max_queued_requests
    options["ray_actor_options"] = {"num_cpus": task_settings.num_cpus, "num_gpus": task_settings.num_gpus}
    return options


def ingress_deployment_options(settings: Settings) -> dict[str, Any]:
    return {
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": settings.ray.ingress_replicas,
        "max_ongoing_requests": settings.ray.ingress_max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.ray.ingress_num_cpus},
    }


def discover_task_names(settings: Settings) -> list[str]:
    _, found = discover(allow=settings.plugins or None, modules=settings.plugin_modules)
    return sorted(found.tasks)
