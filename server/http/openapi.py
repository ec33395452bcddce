"""The OpenAPI document as the server really answers: error statuses and API-key security.

FastAPI documents only the 200 answer of hand-written routes, plus a 422 in its own
validation-error shape that this server never sends (errors.py answers `{"error": ...}`).
Here every operation gets the error statuses it can answer, each with the shared `Error`
schema (the OpenAI route keeps OpenAI's error shape), and, when API keys are on, the
security schemes and a 401 on every operation that needs a key. tests/fuzz checks the result
against the live server with schemathesis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mmserve.server.http.auth import KEY_HEADER, is_exempt

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What went wrong"}},
}
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
DESCRIPTIONS = {
    400: "Malformed request or input (the message names the problem)",
    401: "Missing or invalid API key",
    404: "Unknown model, version or route",
    405: "Method not allowed",
    413: "Request body, upload, media or batch over a limit",
    415: "Unsupported media type or content encoding",
    422: "Invalid parameter, or input the task cannot process",
    501: "Not implemented for this model",
    503: "Not ready or overloaded; retry after Retry-After seconds",
    504: "The task did not answer within request_timeout_s",
}
# Statuses each kind of operation answers besides 200, keyed by (method, path prefix).
_TASK = (400, 413, 415, 422, 503, 504)
_RULES: list[tuple[Callable[[str, str], bool], tuple[int, ...]]] = [
    (lambda m, p: p.startswith("/v2/models/") and p.endswith("/infer"), (400, 404, 413, 415, 422, 501, 503, 504)),
    (lambda m, p: p.startswith("/v2/models/"), (404, 503)),
    (lambda m, p: p == "/v2/health/ready", (503,)),
    (lambda m, p: p.startswith("/v2/repository/models/"), (404, 501, 503)),  # 501: Ray backend
    (lambda m, p: p == "/v2/repository/index", (400,)),
    (lambda m, p: p == "/v1/audio/transcriptions", (400, 404, 413, 415, 422, 503, 504)),
    (lambda m, p: m == "post" and p.startswith("/v1/"), _TASK),
]
# routes_openai.py reads its form by hand; this is what it accepts (OpenAI's transcription API).
TRANSCRIPTION_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "model"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "model": {"type": "string", "description": "A transcribing task, or whisper-1"},
                    "language": {"type": "string"},
                    "prompt": {"type": "string", "description": "Accepted and ignored"},
                    "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"]},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                    "stream": {"type": "boolean"},
                    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
                },
            }
        }
    },
}
TRANSCRIPTION_OK = {
    "description": "The transcript in the requested format",
    "content": {
        "application/json": {"schema": {"type": "object", "properties": {"text": {"type": "string"}}}},
        "text/plain": {"schema": {"type": "string"}},
        "text/vtt": {"schema": {"type": "string"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}
_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": KEY_HEADER},
}


def error_statuses(method: str, path: str) -> tuple[int, ...]:
    """The error statuses an operation can answer (besides 401 and the body-size 413)."""
    for matches, statuses in _RULES:
        if matches(method, path):
            return statuses
    return ()


def install_openapi(app: FastAPI, auth_on: bool, exempt_paths: Sequence[str], models: Sequence[str] = ()) -> None:
    """Replace `app.openapi` with one that documents errors and, when `auth_on`, security.

    `models` (the served task names) become the documented values of `{model_name}`.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = complete(doc, auth_on, exempt_paths, models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(
    doc: dict[str, Any], auth_on: bool, exempt_paths: Sequence[str], models: Sequence[str] = ()
) -> dict[str, Any]:
    """`doc` with error responses (and security when `auth_on`) on every operation."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's shape, never sent here
        schemas.pop(name, None)
    if auth_on:
        components["securitySchemes"] = _SECURITY_SCHEMES
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            if path == "/v1/audio/transcriptions":
                operation.setdefault("requestBody", TRANSCRIPTION_BODY)
                operation.setdefault("responses", {})["200"] = TRANSCRIPTION_OK
            elif method == "post" and path.startswith("/v1/") and "200" in operation.get("responses", {}):
                # Task routes answer JSON, or server-sent events with stream=true.
                ok = operation["responses"]["200"].setdefault("content", {})
                ok.setdefault("text/event-stream", {"schema": {"type": "string"}})
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "model_name" and parameter.get("in") == "path" and models:
                    parameter["schema"] = {**parameter.get("schema", {}), "enum": sorted(models)}  # others: 404
            statuses = set(error_statuses(method, path))
            if "requestBody" in operation:
                statuses.add(413)  # BodySizeLimit answers it before any route runs
            protected = auth_on and not is_exempt(path, exempt_paths)
            if protected:
                statuses.add(401)
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
            schema_ref = "OpenAIError" if path == "/v1/audio/transcriptions" else "Error"
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation shape; re-added below in ours
            for status in sorted(statuses):
                responses[str(status)] = _error_response(status, schema_ref)
    return doc


def _error_response(status: int, schema: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS.get(status, "Error"),
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}}
    return response
