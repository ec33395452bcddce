"""Every error leaves the server as `{"error": "<message>"}` with a fitting status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmserve.plugins.errors import InputError
from mmserve.server.engine import EngineOverloaded, EngineStopped
from mmserve.server.http.request_id import current_request_id

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def status_for(exc: BaseException) -> tuple[int, str, dict[str, str] | None]:
    """The one mapping from an exception to (HTTP status, message, headers such as Retry-After).

    The embedded app's handlers and the Ray replicas both answer through it, so a client sees
    the same status for the same failure on either backend.
    """
    if isinstance(exc, ApiError):
        return exc.status_code, exc.message, exc.headers
    if isinstance(exc, InputError):
        return exc.status_code, str(exc), None
    if isinstance(exc, EngineOverloaded):
        return 503, str(exc), {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, EngineStopped):
        return 503, str(exc), {"Retry-After": "5"}
    if isinstance(exc, RequestValidationError):
        return 422, describe_validation_error(exc), None
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), getattr(exc, "headers", None)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:  # e.g. UnsupportedDecoding (422)
        return status, str(exc), None
    if isinstance(exc, RecursionError):
        return 400, "the request is nested too deeply to parse", None
    return 500, f"internal error: {type(exc).__name__}: {exc}", None


def install_error_handlers(app: FastAPI) -> None:
    async def _answer(_: Request, exc: Exception) -> JSONResponse:
        status, message, headers = status_for(exc)
        if status >= 500 and not headers:  # a bug, not a condition the client can retry
            log.error("unhandled error in request %s", current_request_id.get(), exc_info=exc)
        return error_response(status, message, headers)

    for kind in (ApiError, InputError, EngineOverloaded, EngineStopped, RequestValidationError,
                 StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _answer)
