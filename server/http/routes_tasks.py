"""`POST /v1/<task>` for every served task, JSON or server-sent-event answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mmserve.server.http.observed import observed
from mmserve.server.http.params import GenerationParams, parse_params
from mmserve.server.http.request_body import read_task_input
from mmserve.server.inference import Inference
from mmserve.server.runtime import TaskService

ENDPOINT = "v1"


def _openapi_body(service: TaskService) -> dict[str, Any]:
    params = {
        name: {"type": "string", "description": field.description or ""}
        for name, field in GenerationParams.model_fields.items()
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}, **params},
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "data": {"type": "string", "description": "base64 of the input file"},
                            "content_type": {"type": "string"},
                            **params,
                        },
                    }
                },
                **{ct: {"schema": {"type": "string", "format": "binary"}} for ct in service.task.content_types},
            },
        }
    }


def add_task_routes(app: FastAPI, inference: Inference) -> None:
    for service in inference.runtime.services.values():
        _add_task_route(app, inference, service)


def _add_task_route(app: FastAPI, inference: Inference, service: TaskService) -> None:
    name = service.name
    metrics = inference.runtime.metrics

    async def run_task(request: Request) -> Response:
        return await observed(_handle(request, inference, name), metrics, name, ENDPOINT)

    app.add_api_route(
        f"/v1/{name}",
        run_task,
        methods=["POST"],
        name=f"run_{name}",
        summary=f"Run {name}",
        description=service.task.description
        + "\n\nSend the input as multipart `file`, as JSON `{\"data\": <base64>}`, or as the raw body "
        "with its Content-Type. Decoding parameters go in the query string, form fields or JSON.",
        tags=["tasks"],
        openapi_extra=_openapi_body(service),
        # Files a task answers with (music's format=midi | wav | png), beside JSON and events.
        responses={200: {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                                     for t in service.task.binary_media_types}}},  # fmt: skip
    )


async def _handle(request: Request, inference: Inference, name: str) -> Response:
    service = inference.service(name)  # 404 / 503 before reading a large body
    inference.check_capacity(name)  # overloaded: 503 + Retry-After before reading it, too
    body = await read_task_input(request, inference.max_body_bytes, inference.json_limits)
    params = parse_params(body.params, inference.settings, service.task.request_options, service.task)
    if params.stream:
        events = await inference.open_stream(name, body.data, body.content_type, params)
        return StreamingResponse(
            _server_sent_events(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    output = await inference.run(name, body.data, body.content_type, params, request)
    binary = service.task.binary_response(output)
    if binary is not None and "application/json" not in request.headers.get("accept", ""):
        content, media_type = binary
        model = output.get("model", {})
        headers = {"X-Model-Name": str(model.get("name", name)), "X-Model-Version": str(model.get("version", ""))}
        return Response(content, media_type=media_type, headers=headers)
    return JSONResponse(output)


async def _server_sent_events(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for event, payload in events:
        yield f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()
