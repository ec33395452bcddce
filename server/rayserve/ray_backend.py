"""The Ray Serve backend: one deployment per task behind the same FastAPI app as ingress.

`build_app` is the application builder a Serve config names (`import_path`); `serve_with_ray`
is `mmserve serve --backend ray`: it joins RAY_ADDRESS (or starts a local cluster), deploys
that application on the configured host and port, and serves until interrupted.
`write_serve_config` writes the same application as a Serve config (KubeRay `serveConfigV2`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from mmserve.server.http.app import create_app
from mmserve.server.rayserve.deployments import (
    AppArgs,
    discover_task_names,
    ingress_deployment_options,
    task_deployment_options,
)
from mmserve.server.rayserve.ray_inference import RayInference
from mmserve.server.rayserve.ray_replica import TaskReplica
from mmserve.server.runtime import Runtime
from mmserve.server.settings import Settings, resolved_settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUIET_LOGGING = {"enable_access_log": False}


@serve.ingress()
class Ingress:
    """The HTTP ingress: the embedded app's routes, answered by the task deployments."""

    def __init__(self, settings: dict[str, Any], handles: dict[str, DeploymentHandle]):
        self._settings = settings
        self._handles = handles

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, not pickled from the driver: the app holds locks, threads and
        # a metrics registry that do not travel.
        runtime = Runtime.from_settings(resolved_settings(self._settings))
        return create_app(inference=RayInference(runtime, self._handles))


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for `args` (see AppArgs): an ingress plus a deployment per task."""
    parsed = AppArgs.model_validate(args)
    settings = Settings(**parsed.settings)
    # Replicas get the settings resolved here, whole, so every replica agrees with the builder;
    # an absolute data_dir, because a replica's working directory is not the builder's.
    resolved = settings.model_dump(mode="json")
    resolved["data_dir"] = str(settings.data_dir.expanduser().resolve())
    # Serve's access log writes a line per request in the ingress and again in the replica;
    # under load that costs more CPU than the routing itself, and /metrics counts requests.
    task_deployment = serve.deployment(TaskReplica, logging_config=QUIET_LOGGING)
    handles = {
        task: task_deployment.options(**task_deployment_options(task, settings.task(task))).bind(task, resolved)
        for task in discover_task_names(settings)
    }
    ingress = serve.deployment(Ingress, logging_config=QUIET_LOGGING).options(**ingress_deployment_options(settings))
    return ingress.bind(resolved, handles)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for replicas: where to import mmserve and plugins from, and MLflow's address."""
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


def register_bundled_models(settings: Settings) -> None:
    """Register bundled demo weights once, here, before replicas start resolving models.

    Several replicas doing it at once would race on a fresh MLflow store (and each register a
    version); after this, every replica finds `models:/<task>@<alias>` and only downloads it.
    """
    if not settings.register_bundled:
        return
    runtime = Runtime.from_settings(settings)
    for name, service in runtime.services.items():
        try:
            runtime.registry.ensure_bundled(name, service.task.bundled_artifacts(), settings.task(name).alias)
        except Exception as exc:  # replicas fall back to their cache or report the failure
            log.warning("could not register bundled weights of %s: %s", name, exc)


def serve_with_ray(settings: Settings) -> int:
    """Deploy on Ray Serve at settings.host:settings.port and block until SIGINT or SIGTERM."""
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    register_bundled_models(settings)
    init_options: dict[str, Any] = {"runtime_env": {"env_vars": worker_env(settings)}}
    if address:
        init_options["address"] = address
    else:  # "local": a new cluster, never one a `ray start` left running on this machine
        init_options.update(address="local", num_cpus=settings.ray.num_cpus, num_gpus=settings.ray.num_gpus)
    ray.init(**init_options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        # On a cluster whose Serve is already running, its proxies keep their host and port.
        serve.start(http_options={"host": settings.host, "port": settings.port})
        app = build_app({"settings": settings.model_dump(mode="json")})
        serve.run(app, name=settings.ray.app_name, route_prefix="/", blocking=False)
        log.info("mmserve on Ray Serve at http://%s:%d (Ctrl-C stops)", settings.host, settings.port)
        stop.wait()
    finally:
        _tear_down(settings.ray.app_name, shared=bool(address))
    return 0


def _tear_down(app_name: str, shared: bool) -> None:
    try:
        if shared:  # someone else's cluster: take down only this application
            serve.delete(app_name)
        else:  # ours: stop Serve gracefully (replicas finish what they accepted), then Ray
            serve.shutdown()
    except Exception as exc:  # never hide the error that got us here
        log.warning("stopping Ray Serve failed: %s", exc)
    finally:
        ray.shutdown()


def write_serve_config(settings: Settings) -> str:
    """The Ray Serve config YAML for `settings`, validated (see server/serve_config.py)."""
    from mmserve.server.rayserve.serve_config import serve_config_yaml

    return serve_config_yaml(settings)
