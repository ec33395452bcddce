"""Read a task request's input bytes and parameters from multipart, JSON or raw bodies."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from mmserve.server.http.errors import ApiError
from mmserve.server.http.json_limits import JsonLimitError, JsonLimits, load_json
from mmserve.server.http.v2_codec import CodecError, decompress_body


@dataclass
class TaskInput:
    data: bytes
    content_type: str | None
    params: dict[str, Any]


async def read_task_input(request: Request, max_body_bytes: int, json_limits: JsonLimits) -> TaskInput:
    """Multipart (`file` + optional fields), JSON (`data` base64 + fields) or a raw body.

    Query parameters are decoding parameters too; body fields win over them. A JSON body is
    parsed within `json_limits` (size and nesting depth).
    """
    params: dict[str, Any] = dict(request.query_params)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        return await _read_compressed(request, params, max_body_bytes, json_limits)
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, params)
    if media_type == "application/json":
        return await _read_json(request, params, json_limits)
    data = await request.body()
    return TaskInput(data, media_type or None, params)


async def _read_multipart(request: Request, params: dict[str, Any]) -> TaskInput:
    try:
        form = await request.form(max_files=1, max_fields=32)
    except MultiPartException as exc:
        raise ApiError(400, f"could not parse the multipart body: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "multipart upload needs a file field named 'file'")
    data = await upload.read()
    for key, value in form.multi_items():
        if key != "file":
            params[key] = value
    return TaskInput(data, upload.content_type, params)


async def _read_json(request: Request, params: dict[str, Any], limits: JsonLimits) -> TaskInput:
    try:
        body = load_json(await request.body(), limits)
    except JsonLimitError as exc:
        raise ApiError(exc.status_code, str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "JSON body must be an object with a base64 'data' field")
    encoded = body.pop("data", None)
    if not isinstance(encoded, str) or not encoded:
        raise ApiError(400, "JSON body needs a non-empty base64 string field 'data'")
    if "," in encoded[:100] and encoded.startswith("data:"):  # a data: URL
        header, encoded = encoded.split(",", 1)
        body.setdefault("content_type", header[5:].split(";")[0])
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"field 'data' is not valid base64: {exc}") from None
    content_type = body.pop("content_type", None)
    params.update(body)
    return TaskInput(data, content_type, params)


async def _read_compressed(
    request: Request, params: dict[str, Any], max_body_bytes: int, json_limits: JsonLimits
) -> TaskInput:
    # Multipart and JSON parsers read the wire bytes, so a compressed body is inflated first
    # (capped, so a small "zip bomb" is refused) and parsed as if it had been sent plain.
    try:
        body = decompress_body(await request.body(), request.headers.get("content-encoding"), max_body_bytes)
    except CodecError as exc:
        raise ApiError(exc.status_code, str(exc)) from None
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
    scope = {**request.scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    inner = await read_task_input(Request(scope, receive), max_body_bytes, json_limits)
    inner.params = {**params, **inner.params}
    return inner
