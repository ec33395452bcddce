"""OpenAI-compatible `POST /v1/audio/transcriptions`, for tasks that declare `transcribes = True`.

The `openai` SDK (and tools built on it) send a multipart form: `file`, `model`, and optional
`language`, `prompt` (accepted and ignored), `response_format` (json | text | srt | vtt |
verbose_json), `temperature`, `timestamp_granularities[]` and `stream`. `model` names a
transcribing task; `whisper-1`, which many tools send, is an alias of the first one. Every
request goes through the shared Inference seam (`run` / `open_stream`), so both backends serve
it. Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from mmserve.server.http.errors import ApiError, status_for
from mmserve.server.http.observed import observed
from mmserve.server.http.params import GenerationParams
from mmserve.server.inference import ClientDisconnected, Inference

ENDPOINT = "openai"
MODEL_ALIASES = ("whisper-1",)
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "server_error", 504: "server_error"}  # fmt: skip


def transcribing_tasks(inference: Inference) -> list[str]:
    return [name for name, s in inference.runtime.services.items() if getattr(s.task, "transcribes", False)]


def openai_error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": None if status < 500 else "server_error"}}
    if status == 404:
        body["error"]["code"] = "model_not_found"
    return JSONResponse(body, status_code=status, headers=headers)


def add_openai_routes(app: FastAPI, inference: Inference) -> None:
    """Register the transcription route when some served task transcribes."""
    tasks = transcribing_tasks(inference)
    if not tasks:
        return
    metrics = inference.runtime.metrics

    async def transcriptions(request: Request) -> Response:
        async def answer() -> Response:
            try:
                return await _transcribe(request, inference, tasks)
            except ClientDisconnected:
                raise
            except Exception as exc:  # every failure in OpenAI's error shape
                status, message, headers = status_for(exc)
                return openai_error(status, message, getattr(exc, "param", None), headers)

        return await observed(answer(), metrics, tasks[0], ENDPOINT)

    app.add_api_route(
        "/v1/audio/transcriptions",
        transcriptions,
        methods=["POST"],
        name="openai_transcriptions",
        summary="Transcribe audio (OpenAI-compatible)",
        description="OpenAI's audio transcription API: multipart `file` and `model` (a transcribing task, or "
        f"`whisper-1` for `{tasks[0]}`); `response_format` json | text | srt | vtt | verbose_json; `stream`.",
        tags=["openai"],
    )


class FormError(ApiError):
    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(status, message)
        self.param = param


async def _transcribe(request: Request, inference: Inference, tasks: list[str]) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise FormError("send the audio as multipart/form-data with a `file` field", "file")
    try:
        form = await request.form(max_files=1, max_fields=32)
    except MultiPartException as exc:
        raise FormError(f"could not read the multipart form: {exc}", "file") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise FormError("the form has no `file` upload", "file")
    model = str(form.get("model") or "")
    if not model:
        raise FormError("you must provide a model parameter", "model")
    task = tasks[0] if model in MODEL_ALIASES else model
    if task not in tasks:
        raise FormError(f"the model {model!r} does not exist; transcription models: {[*tasks, *MODEL_ALIASES]}", "model", 404)
    response_format = str(form.get("response_format") or "json")
    if response_format not in RESPONSE_FORMATS:
        raise FormError(f"response_format must be one of {list(RESPONSE_FORMATS)}, got {response_format!r}", "response_format")
    try:
        temperature = float(form.get("temperature") or 0.0)
    except ValueError:
        raise FormError(f"temperature must be a number, got {form.get('temperature')!r}", "temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise FormError(f"temperature must be between 0 and 1, got {temperature:g}", "temperature")
    stream = str(form.get("stream") or "false").lower() == "true"
    granularities = [str(v) for v in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")]
    bad = sorted(set(granularities) - {"word", "segment"})
    if bad:
        raise FormError(f"timestamp_granularities must be word and/or segment, got {bad}", "timestamp_granularities[]")
    data = await upload.read()
    content_type = upload.content_type
    params = GenerationParams(temperature=temperature, stream=stream)
    if stream:
        events = await inference.open_stream(task, data, content_type, params)
        return StreamingResponse(_openai_events(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    output = await inference.run(task, data, content_type, params, request)
    return _format(output, response_format, str(form.get("language") or "en"), granularities)


def _format(output: dict[str, Any], response_format: str, language: str, granularities: list[str]) -> Response:
    text = output.get("text", "")
    if response_format == "json":
        return JSONResponse({"text": text})
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    words = output.get("words", [])
    duration = float(output.get("duration") or (words[-1]["end"] if words else 0.0))
    # A long upload was transcribed in segments (their spans are in the output); else one segment.
    spans = output.get("segments") or ([{"start": 0.0, "end": duration, "text": text}] if text else [])
    avg_logprob = float(output.get("score", 0.0)) / max(len(text), 1)
    segments = [{"id": i, "seek": 0, "start": span["start"], "end": span["end"], "text": span["text"], "tokens": [],
                 "temperature": 0.0, "avg_logprob": avg_logprob, "compression_ratio": 1.0, "no_speech_prob": 0.0}
                for i, span in enumerate(spans)]  # fmt: skip
    if response_format == "srt":
        return PlainTextResponse("".join(f"{i + 1}\n{_clock(span['start'], ',')} --> {_clock(span['end'], ',')}\n{span['text']}\n\n"
                                         for i, span in enumerate(spans)))  # fmt: skip
    if response_format == "vtt":
        cues = "".join(f"{_clock(span['start'], '.')} --> {_clock(span['end'], '.')}\n{span['text']}\n\n" for span in spans)
        return PlainTextResponse("WEBVTT\n\n" + cues, media_type="text/vtt")
    body: dict[str, Any] = {"task": "transcribe", "language": language, "duration": duration, "text": text,
                            "segments": segments}  # fmt: skip
    if "word" in granularities:
        body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]} for w in words]
    return JSONResponse(body)


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    h, rest = divmod(millis, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


async def _openai_events(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    """OpenAI's transcript stream: `transcript.text.delta` per piece, then `transcript.text.done`."""
    async for event, payload in events:
        if event == "token":
            delta = payload["token"] if isinstance(payload["token"], str) else ""
            data: dict[str, Any] = {"type": "transcript.text.delta", "delta": delta}
        elif event == "result":
            data = {"type": "transcript.text.done", "text": payload.get("text", "")}
        else:
            status = int(payload.get("status", 500))
            data = {"error": {"message": payload.get("error", "error"), "type": ERROR_TYPES.get(status, "server_error"),
                              "param": None, "code": None}}  # fmt: skip
        yield f"event: {data.get('type', 'error')}\ndata: {json.dumps(data)}\n\n".encode()
