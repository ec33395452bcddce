"""The FastAPI app factory: task endpoints, Open Inference Protocol v2, metrics, docs."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import __version__
from server.body_limit import BodySizeLimit
from server.errors import install_error_handlers
from server.inference import Inference
from server.routes_tasks import add_task_routes
from server.routes_v2 import add_v2_routes
from server.runtime import Runtime
from server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Plugins are discovered now (routes need task names); models load at startup."""
    settings = settings or Settings()
    runtime = runtime or Runtime.from_settings(settings)
    inference = Inference(runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.to_thread(runtime.load_all)
        yield
        runtime.stop()
        inference.shutdown()

    app = FastAPI(
        title="mmserve",
        version=__version__,
        description="Multimodal model server: encoder + attention-RNN decoder tasks from plugins.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.inference = inference
    install_error_handlers(app)
    add_task_routes(app, inference)
    add_v2_routes(app, inference)
    _add_meta_routes(app, runtime)
    # Base64 in JSON grows a file by 4/3; multipart adds headers. The exact per-file limit is
    # enforced again on the decoded bytes by the task's preprocess.
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_upload_bytes * 4 // 3 + 64 * 1024)
    return app


def _add_meta_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks", tags=["meta"], summary="Served tasks, their plugins, model versions and health")
    async def tasks() -> JSONResponse:
        return JSONResponse({"tasks": [_describe(s) for s in runtime.services.values()], "plugins": _plugins(runtime)})


def _describe(service) -> dict[str, Any]:
    return {
        "name": service.name,
        "plugin": service.plugin,
        "status": service.status,
        "error": service.error,
        "model": {
            "version": service.version,
            "alias": service.resolved.alias if service.resolved else None,
            "from_cache": service.resolved.from_cache if service.resolved else None,
        },
        "device": service.device,
        "queue_depth": service.engine.queue_depth if service.engine else 0,
        "active_sequences": service.engine.active_sequences if service.engine else 0,
    }


def _plugins(runtime: Runtime) -> list[dict[str, Any]]:
    return [{"name": p.name, "source": p.source, "tasks": p.tasks, "error": p.error} for p in runtime.discovery.plugins]
