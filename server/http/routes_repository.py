"""Triton's model repository extension: list models, load (switch to the alias's version), unload.

- `POST /v2/repository/index`: every model with its served version and state
  (READY, UNAVAILABLE, LOADING), and the reason when it is not ready. Body `{"ready": true}`
  lists only ready ones.
- `POST /v2/repository/models/{m}/load`: resolve `m@alias` in MLflow now, load that version
  beside the served one and switch atomically (what the poller does on its own every
  `model_poll_interval_s`). Answers the version served now and whether it switched.
- `POST /v2/repository/models/{m}/unload`: stop serving `m` (503 until loaded again); requests
  in flight finish first.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mmserve.server.http.errors import ApiError
from mmserve.server.http.json_limits import JsonLimitError, load_json
from mmserve.server.inference import Inference

STATES = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE", "unloaded": "UNAVAILABLE"}
_OPTIONAL_JSON_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}},
    }
}


def add_repository_routes(app: FastAPI, inference: Inference) -> None:
    tags = ["v2 repository"]
    services = inference.runtime.services

    @app.post("/v2/repository/index", tags=tags, summary="Models and their state", openapi_extra=_OPTIONAL_JSON_BODY)
    async def index(request: Request) -> JSONResponse:
        body = await _optional_json(request, inference)
        only_ready = body.get("ready", False)
        if not isinstance(only_ready, bool):
            raise ApiError(400, f"'ready' must be true or false, got {only_ready!r}")
        models = []
        for service in services.values():
            if only_ready and not service.ready:
                continue
            entry: dict[str, Any] = {"name": service.name, "version": service.version, "state": STATES[service.status]}
            if not service.ready and service.error:
                entry["reason"] = service.error
            models.append(entry)
        return JSONResponse(models)

    @app.post("/v2/repository/models/{model_name}/load", tags=tags, summary="Load the alias's version and switch")
    async def load(model_name: str) -> JSONResponse:
        _known(inference, model_name)
        try:
            return JSONResponse(await inference.load_model(model_name))
        except ApiError:
            raise
        except Exception as exc:  # the old version serves on; the reason goes back to the caller
            raise ApiError(503, f"model {model_name!r} could not be loaded: {type(exc).__name__}: {exc}",
                           {"Retry-After": "5"}) from exc

    @app.post("/v2/repository/models/{model_name}/unload", tags=tags, summary="Stop serving a model")
    async def unload(model_name: str) -> JSONResponse:
        _known(inference, model_name)
        await inference.unload_model(model_name)
        return JSONResponse({"name": model_name, "state": "UNAVAILABLE"})


def _known(inference: Inference, name: str) -> None:
    if name not in inference.runtime.services:
        raise ApiError(404, f"unknown model {name!r}; served models: {sorted(inference.runtime.services)}")


async def _optional_json(request: Request, inference: Inference) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = load_json(raw, inference.json_limits)
    except JsonLimitError as exc:
        raise ApiError(exc.status_code, str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body
