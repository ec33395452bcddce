"""The FastAPI app factory: task endpoints, Open Inference Protocol v2, metrics, docs."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mmserve.server import __version__
from mmserve.server.http.auth import KEY_HEADER, ApiKeyAuth, load_api_keys
from mmserve.server.http.body_limit import BodySizeLimit
from mmserve.server.http.errors import install_error_handlers
from mmserve.server.http.loop_lag import MAX_LOOP_LAG_S, LoopLagShedder
from mmserve.server.http.openapi import install_openapi
from mmserve.server.http.request_id import HEADER as REQUEST_ID_HEADER
from mmserve.server.http.request_id import RequestId
from mmserve.server.http.routes_openai import add_openai_routes
from mmserve.server.http.routes_repository import add_repository_routes
from mmserve.server.http.routes_tasks import add_task_routes
from mmserve.server.http.routes_v2 import add_v2_routes
from mmserve.server.inference import Inference
from mmserve.server.runtime import Runtime
from mmserve.server.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, inference: Inference | None = None
) -> FastAPI:
    """Build the app. Plugins are discovered now (routes need task names); models load at startup.

    `inference` replaces the in-process one: the Ray backend passes one that calls task
    deployments, so the same routes serve either backend.
    """
    if inference is None:
        runtime = runtime or Runtime.from_settings(settings or Settings())
        inference = Inference(runtime)
    runtime = inference.runtime
    settings = inference.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await inference.start()
        yield
        await inference.stop()

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
    add_repository_routes(app, inference)  # Triton's model repository extension: load / unload / index
    add_openai_routes(app, inference)  # only when a task transcribes (OpenAI audio API)
    _add_meta_routes(app, inference)
    # The exact per-file limit is enforced again on the decoded bytes by the task's preprocess.
    app.add_middleware(BodySizeLimit, max_body_bytes=inference.max_body_bytes)
    api_keys = load_api_keys(settings)  # before serving: a bad key file stops the start
    if api_keys:  # added last, so it runs first: no body is read for an unauthenticated request
        app.add_middleware(ApiKeyAuth, keys=api_keys, exempt_paths=settings.auth_exempt_paths)
    if settings.cors_allow_origins:  # outside auth: a browser's preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", KEY_HEADER, "Content-Type", "Content-Encoding", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", "Inference-Header-Content-Length"],
        )
    # Inside RequestId (the 503 carries the id), outside everything else: no work before it.
    app.add_middleware(LoopLagShedder, max_lag_s=MAX_LOOP_LAG_S)
    app.add_middleware(RequestId)  # outermost: every answer, 401 and 413 included, carries the id
    install_openapi(app, bool(api_keys), settings.auth_exempt_paths, models=list(runtime.services))
    return app


def _add_meta_routes(app: FastAPI, inference: Inference) -> None:
    runtime = inference.runtime

    @app.get(
        "/metrics",
        tags=["meta"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks", tags=["meta"], summary="Served tasks, their plugins, model versions and health")
    async def tasks() -> JSONResponse:
        await inference.refresh()
        described = [inference.describe(s) for s in runtime.services.values()]
        return JSONResponse({"tasks": described, "plugins": _plugins(runtime)})


def _plugins(runtime: Runtime) -> list[dict[str, Any]]:
    return [{"name": p.name, "source": p.source, "tasks": p.tasks, "error": p.error} for p in runtime.discovery.plugins]
