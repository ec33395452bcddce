"""The Ray Serve config document (`serve deploy`, KubeRay `serveConfigV2`) for mmserve settings.

One application: the ingress plus a deployment per discovered task, with the per-task replica,
autoscaling, resource and queueing options from the settings. `ServeDeploySchema` ignores keys
it does not know (a typo such as `num_replica` would silently deploy defaults), so the document
is also walked against the schema's fields and every unknown key is an error naming its path.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Iterator
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeDeploySchema

from mmserve.server.rayserve.deployments import (
    IMPORT_PATH,
    AppArgs,
    discover_task_names,
    ingress_deployment_options,
    task_deployment_options,
)
from mmserve.server.settings import Settings, resolved_settings

log = logging.getLogger(__name__)

# Settings that the document states elsewhere (http_options) or that mean nothing in-cluster.
# Secrets never go into the written document: the cluster supplies MMSERVE_API_KEYS or a key file.
NOT_PASSED_TO_APP = {"host", "port", "backend", "api_keys"}


class ServeConfigError(ValueError):
    """The Serve config is invalid; the message names the offending key or value."""


def build_serve_config(settings: Settings, tasks: list[str]) -> dict[str, Any]:
    """The config document (a plain dict) serving `tasks` with `settings`."""
    application: dict[str, Any] = {
        "name": settings.ray.app_name,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
    }
    env_vars = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if os.environ.get(k)}
    if env_vars:
        application["runtime_env"] = {"env_vars": env_vars}
    # Only what was set (by any source): the cluster's own environment supplies the rest.
    application["args"] = {
        "settings": settings.model_dump(mode="json", exclude_unset=True, exclude=NOT_PASSED_TO_APP)
    }
    application["deployments"] = [ingress_deployment_options(settings)] + [
        task_deployment_options(task, settings.task(task)) for task in tasks
    ]
    # The document is for a cluster: unless a host was chosen, listen on every interface so
    # that the pod's port is reachable (the embedded default, 127.0.0.1, would not be).
    host = settings.host if "host" in settings.model_fields_set else "0.0.0.0"
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": settings.port},
        "applications": [application],
    }


def validate_serve_config(document: dict[str, Any]) -> ServeDeploySchema:
    """Parse `document` with Ray's schema after rejecting unknown keys, and check mmserve's args."""
    unknown = unknown_keys(document, ServeDeploySchema)
    if unknown:
        raise ServeConfigError(f"unknown key(s) in the Serve config: {', '.join(unknown)}")
    try:
        schema = ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        raise ServeConfigError(f"invalid Serve config: {exc}") from None
    for index, app in enumerate(schema.applications):
        if app.import_path == IMPORT_PATH:
            _check_app_args(app.args, f"applications[{index}].args")
    return schema


def _check_app_args(args: dict[str, Any], where: str) -> None:
    try:
        parsed = AppArgs.model_validate(args)
    except ValidationError as exc:
        raise ServeConfigError(f"invalid mmserve arguments: {_problems(exc, where)}") from None
    try:
        resolved_settings(parsed.settings)
    except ValidationError as exc:
        raise ServeConfigError(f"invalid mmserve settings: {_problems(exc, where + '.settings')}") from None


def _problems(exc: ValidationError, where: str) -> str:
    return "; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def unknown_keys(value: dict[str, Any], model: type[BaseModel], path: str = "") -> list[str]:
    """Dotted paths of the keys in `value` that `model` (recursively) has no field for."""
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if field.alias:
            fields[field.alias] = field
    found: list[str] = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            found.append(where)
        elif key == "runtime_env" and isinstance(item, dict):
            # A free-form dict to the schema, but Ray only knows these fields.
            found += [f"{where}.{k}" for k in item if k not in RuntimeEnv.known_fields]
        else:
            found += _unknown_in(item, field.annotation, where)
    return found


def _unknown_in(value: Any, annotation: Any, path: str) -> list[str]:
    for option in _alternatives(annotation):
        if isinstance(value, dict) and isinstance(option, type) and issubclass(option, BaseModel):
            return unknown_keys(value, option, path)
        if isinstance(value, list) and get_origin(option) is list and get_args(option):
            (item_type,) = get_args(option)
            return [key for i, item in enumerate(value) for key in _unknown_in(item, item_type, f"{path}[{i}]")]
    return []  # a scalar, or a free-form dict such as `args` or `user_config`


def _alternatives(annotation: Any) -> Iterator[Any]:
    """The types an annotation allows: Optional/Union arms and Annotated bases, flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _alternatives(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for arm in get_args(annotation):
            yield from _alternatives(arm)
    else:
        yield annotation


def serve_config_yaml(settings: Settings) -> str:
    """The validated config as YAML, for `mmserve serve-config`."""
    tasks = discover_task_names(settings)
    configured = {name.lower() for name in settings.tasks}
    stray = sorted(configured - {t.lower() for t in tasks})
    if stray:
        log.warning("settings name task(s) %s that no loaded plugin provides; they get no deployment", stray)
    document = build_serve_config(settings, tasks)
    validate_serve_config(document)
    header = (
        "# Ray Serve config for mmserve, written by `mmserve serve-config`.\n"
        "# Deploy with `serve deploy <file>`, or paste it under a KubeRay RayService's spec.serveConfigV2.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)
