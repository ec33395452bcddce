"""Open Inference Protocol v2 (KServe / Triton) endpoints, with Triton's binary tensor data
extension, so `tritonclient.http` works unmodified.

Every served task is a v2 model named after the task; its version is the served model version.

Inputs. A request sends one of the task's `v2_inputs`: its BYTES input, or a numeric one
(e.g. music's NOTES INT32 [N, steps, voices], speech's WAVEFORM FP32 [N, samples] with a
`sample_rate` parameter) whose rows `Task.v2_input` turns, with the input's parameters, into
the bytes preprocess takes. The first dimension is the batch: shape [N] (or [N, 1]) holds N independent
BYTES inputs. Each is preprocessed and decoded as its own request, all submitted at once so the
engine batches them; every output has N rows.

- Binary form: each element is the raw file (image bytes, UTF-8 text, ...).
- JSON form: each element is a string. For a task whose content types are all text/* (echo),
  the string is the text itself. For any other task (images, audio, video) the string must be
  base64 of the file, because a JSON string cannot carry arbitrary bytes; anything else is a
  400 naming the element.
- Optional `parameters.content_type` on the input is handed to the task as the upload's MIME
  type; without it the task judges the bytes themselves.

Parameters. Request-level `parameters` are decoding parameters (beam_size, max_length,
temperature, top_k, top_p, length_penalty, attention), validated like the /v1 ones (422).
`stream` is refused: use `POST /v1/<task>?stream=true` for server-sent events. Triton's own
keys (binary_data_output, priority, timeout, sequence_*, triton_*) are accepted; only
binary_data_output has an effect.

Outputs. JSON data by default; binary when the requested output's `parameters.binary_data`
is true, or, for outputs without that parameter, when the request parameter
`binary_data_output` is true (tritonclient sets it when a request names no outputs). In JSON
form a BYTES element is text when the task returns a str and base64 when it returns bytes.

Bodies may be gzip or deflate compressed (Content-Encoding), and infer responses are
compressed when Accept-Encoding asks for gzip or deflate. Errors are `{"error": "..."}` with
400 (malformed tensors, or the task's own input errors: 413/415 likewise pass through), 404
(unknown model or version), 413 (a batch longer than the task's queue, or a body that inflates
past the limit), 415 (content encoding), 422 (parameters), 501 (a task without exactly one
BYTES input) or 503 (not ready, overloaded).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mmserve.plugins.errors import InputError
from mmserve.plugins.task import Task, TensorSpec
from mmserve.server import __version__
from mmserve.server.http.errors import ApiError
from mmserve.server.http.observed import observed
from mmserve.server.http.params import GenerationParams, parse_params
from mmserve.server.http.v2_codec import (
    NUMPY_DTYPES,
    CodecError,
    InferRequest,
    build_body,
    compress_body,
    decode_base64_element,
    decode_binary_tensor,
    decode_json_tensor,
    decompress_body,
    element_count,
    encode_binary_tensor,
    encode_json_data,
    json_object,
    parse_infer_request,
)
from mmserve.server.inference import ClientDisconnected, Inference, wait_for_disconnect
from mmserve.server.runtime import TaskService
from mmserve.server.settings import Settings

ENDPOINT = "v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "parameters"]
PLATFORM = "pytorch"
# Request parameters that belong to Triton or tritonclient, not to decoding.
TRITON_PARAMS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)
TRITON_PARAM_PREFIX = "triton_"
_INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object", "description": "decoding parameters, e.g. max_length"},
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"JSON header of {HEADER_LENGTH} bytes, then the binary tensors",
            },
        },
    }
}


@dataclass
class OutputChoice:
    spec: TensorSpec
    binary: bool


def add_v2_routes(app: FastAPI, inference: Inference) -> None:
    """Register the v2 health, metadata and infer endpoints on `app`."""
    _add_health_routes(app, inference)
    _add_model_routes(app, inference)
    _add_infer_routes(app, inference)


# ----- health and metadata ------------------------------------------------------------------


def _add_health_routes(app: FastAPI, inference: Inference) -> None:
    tags = ["v2"]

    @app.get("/v2", tags=tags, summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "mmserve", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", tags=tags, summary="Liveness")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=tags, summary="Readiness: 200 when every task is ready, else 503")
    async def server_ready() -> JSONResponse:
        body = _readiness(inference)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)


def _readiness(inference: Inference) -> dict[str, Any]:
    runtime = inference.runtime
    tasks = [
        {"name": s.name, "ready": s.ready, "status": s.status, "version": s.version, "error": s.error}
        for s in runtime.services.values()
    ]
    failed = [{"name": p.name, "source": p.source, "error": p.error} for p in runtime.discovery.failed]
    # A server with no task at all has nothing to serve, so it must not take traffic either.
    ready = bool(tasks) and all(t["ready"] for t in tasks)
    body: dict[str, Any] = {"ready": ready, "tasks": tasks, "failed_plugins": failed}
    if not ready:
        waiting = [f"{t['name']} ({t['status']}{': ' + t['error'] if t['error'] else ''})" for t in tasks if not t["ready"]]
        body["error"] = "tasks not ready: " + ", ".join(waiting) if waiting else "no tasks are served"
    return body


def _add_model_routes(app: FastAPI, inference: Inference) -> None:
    tags = ["v2"]

    @app.get("/v2/models/{model_name}", tags=tags, summary="Model metadata")
    async def model_metadata(model_name: str) -> dict[str, Any]:
        return _metadata(_known_model(inference, model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=tags, summary="Model metadata (versioned)")
    async def model_version_metadata(model_name: str, model_version: str) -> dict[str, Any]:
        return _metadata(_known_model(inference, model_name, model_version))

    @app.get("/v2/models/{model_name}/ready", tags=tags, summary="Model readiness")
    async def model_ready(model_name: str) -> JSONResponse:
        return _model_readiness(_known_model(inference, model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=tags, summary="Model readiness (versioned)")
    async def model_version_ready(model_name: str, model_version: str) -> JSONResponse:
        return _model_readiness(_known_model(inference, model_name, model_version))


def _known_model(inference: Inference, name: str, version: str | None = None) -> TaskService:
    """The service for `name`, ready or not (metadata is static); 404 if unknown."""
    service = inference.runtime.services.get(name)
    if service is None:
        raise ApiError(404, f"unknown model {name!r}; served models: {sorted(inference.runtime.services)}")
    if version is not None:
        _check_version(service, version)
    return service


def _check_version(service: TaskService, version: str) -> None:
    if service.version is None:
        # No loaded model means no version to compare against: this is "not ready", not "absent".
        raise ApiError(503, f"model {service.name!r} is not ready: {_not_ready_reason(service)}", {"Retry-After": "5"})
    if version != service.version:
        raise ApiError(
            404, f"model {service.name!r} has no version {version!r}; the served version is {service.version!r}"
        )


def _not_ready_reason(service: TaskService) -> str:
    return service.error or f"its model is {service.status}"


def _metadata(service: TaskService) -> dict[str, Any]:
    return {
        "name": service.name,
        "versions": [service.version] if service.version else [],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(spec) for spec in service.task.v2_inputs],
        "outputs": [_tensor_metadata(spec) for spec in service.task.v2_outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    # A task declares one item's shape; the first dimension is the batch, so any size goes.
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape[1:]]}


def _model_readiness(service: TaskService) -> JSONResponse:
    if service.ready:
        return JSONResponse({"name": service.name, "ready": True})
    body = {"name": service.name, "ready": False, "error": f"model {service.name!r} is not ready: {_not_ready_reason(service)}"}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


# ----- infer --------------------------------------------------------------------------------


def _add_infer_routes(app: FastAPI, inference: Inference) -> None:
    tags = ["v2"]

    @app.post("/v2/models/{model_name}/infer", tags=tags, summary="Inference", openapi_extra=_INFER_OPENAPI)
    async def infer(request: Request, model_name: str) -> Response:
        return await _observed_infer(request, inference, model_name, None)

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        tags=tags,
        summary="Inference (versioned)",
        openapi_extra=_INFER_OPENAPI,
    )
    async def infer_version(request: Request, model_name: str, model_version: str) -> Response:
        return await _observed_infer(request, inference, model_name, model_version)


async def _observed_infer(request: Request, inference: Inference, model_name: str, version: str | None) -> Response:
    """Run one infer request and record its status and latency."""
    served = model_name in inference.runtime.services
    work = _infer(request, inference, model_name, version)
    return await observed(work, inference.runtime.metrics, model_name, ENDPOINT, labelled=served)


async def _infer(request: Request, inference: Inference, model_name: str, version: str | None) -> Response:
    _known_model(inference, model_name, version)  # v2 wording for unknown models and versions
    service = inference.service(model_name)  # 503 unless ready
    inference.check_capacity(model_name)  # overloaded: 503 + Retry-After before reading the body
    try:
        body = decompress_body(
            await request.body(), request.headers.get("content-encoding"), inference.max_body_bytes
        )
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), inference.json_limits)
        params = _generation_params(parsed.params, inference.settings, service.task)
        outputs = _choose_outputs(service.task, parsed)  # validated before any model work
        input_name, items = _input_items(service.task, parsed)
    except CodecError as exc:
        raise ApiError(exc.status_code, str(exc)) from None
    _check_batch_size(inference.settings, service.name, len(items))
    results = await _run_all(inference, service.name, input_name, items, params, request)
    per_item = [service.task.to_v2_outputs(result) for result in results]
    version = _produced_by(results, service)
    return _infer_response(service, version, parsed.id, outputs, per_item, request.headers.get("accept-encoding"))


def _produced_by(results: list[dict[str, Any]], service: TaskService) -> str | None:
    # Each result names the version that produced it; during a model update the served
    # version may already be the next one, so the answer's own version is reported. A batch
    # runs on one pinned version (embedded); Ray replicas may differ mid-rollout, and then
    # every version that took part is named, in element order.
    versions = [r["model"].get("version") for r in results if isinstance(r.get("model"), dict)]
    if not versions:
        return service.version
    distinct = list(dict.fromkeys(versions))
    return distinct[0] if len(distinct) == 1 else ",".join(str(v) for v in distinct)


def _check_batch_size(settings: Settings, task: str, size: int) -> None:
    # All N elements enter the engine's queue at once, so a batch longer than the queue would
    # get "overloaded, retry later" forever; say what is actually wrong instead.
    limit = settings.task(task).max_queue
    if size > limit:
        raise ApiError(413, f"batch of {size} is over the {limit} inputs task {task!r} can queue; split the request")


def _generation_params(raw: dict[str, Any], settings: Settings, task: Task) -> GenerationParams:
    ours = {k: v for k, v in raw.items() if k not in TRITON_PARAMS and not k.startswith(TRITON_PARAM_PREFIX)}
    params = parse_params(ours, settings, task.request_options, task)
    if params.stream:
        raise ApiError(422, "parameter 'stream' is not available over v2; use POST /v1/<task>?stream=true")
    return params


def _choose_outputs(task: Task, parsed: InferRequest) -> list[OutputChoice]:
    """The outputs to return, in order, each with its binary flag; all declared ones by default."""
    if parsed.outputs is None:
        return [OutputChoice(spec, parsed.binary_output) for spec in task.v2_outputs]
    declared = {spec.name: spec for spec in task.v2_outputs}
    chosen: list[OutputChoice] = []
    for requested in parsed.outputs:
        name = requested.get("name")
        if name not in declared:
            raise CodecError(f"unknown output {name!r} for model {task.name!r}; its outputs are {list(declared)}")
        if any(c.spec.name == name for c in chosen):
            raise CodecError(f"output {name!r} is requested twice")
        params = json_object(requested.get("parameters"), f"parameters of output {name!r}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in params:
                raise CodecError(f"output parameter {unsupported!r} is not supported")
        binary = params.get("binary_data", parsed.binary_output)
        if not isinstance(binary, bool):
            raise CodecError(f"binary_data of output {name!r} must be true or false, got {binary!r}")
        chosen.append(OutputChoice(declared[name], binary))
    return chosen


def _input_items(task: Task, parsed: InferRequest) -> tuple[str, list[tuple[bytes, str | None]]]:
    """The input's name and one (bytes, content type) per batch element."""
    spec = _chosen_input(task, parsed)
    tensor, chunk = parsed.inputs[0], parsed.chunks[0]
    if tensor.get("datatype") != spec.datatype:
        raise CodecError(f"input {spec.name!r} has datatype {tensor.get('datatype')!r}; it must be {spec.datatype}")
    shape = tensor.get("shape")
    if spec.datatype != "BYTES":  # an array per batch element, which the task turns into its input bytes
        return spec.name, _array_items(task, spec, tensor, chunk)
    _check_batch_shape(spec.name, shape)
    elements = _decode_elements(task, spec.name, tensor, chunk)
    params = json_object(tensor.get("parameters"), f"parameters of input {spec.name!r}")
    content_type = params.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise CodecError(f"content_type of input {spec.name!r} must be a string")
    return spec.name, [(element, content_type) for element in elements]


def _chosen_input(task: Task, parsed: InferRequest) -> TensorSpec:
    # Task.preprocess takes one input per request: a request sends exactly one of the task's
    # v2 inputs (e.g. music's PRIMER file or its NOTES array).
    if not any(spec.datatype == "BYTES" for spec in task.v2_inputs):
        raise ApiError(501, f"model {task.name!r} declares v2 inputs {task.v2_inputs}; the v2 endpoint needs a BYTES input")
    specs = {spec.name: spec for spec in task.v2_inputs}
    names = [t.get("name") for t in parsed.inputs]
    if len(names) != 1 or names[0] not in specs:
        unknown = [n for n in names if n not in specs]
        problem = f"unknown input {unknown[0]!r}" if unknown else f"{len(names)} inputs"
        raise CodecError(f"{problem} for model {task.name!r}; it takes exactly one input, one of {sorted(specs)}")
    return specs[names[0]]


def _array_items(task: Task, spec: TensorSpec, tensor: dict[str, Any], chunk: bytes | None) -> list[tuple[bytes, str | None]]:
    """A numeric input [N, ...]: each of its N rows becomes one request through `Task.v2_input`."""
    shape = tensor.get("shape")
    element_count(shape)  # a list of integers, or CodecError
    if len(shape) < 2 or shape[0] < 1:
        raise CodecError(f"input {spec.name!r} has shape {shape}; it must be [N, ...]: a batch of N >= 1 arrays")
    try:
        if chunk is not None:
            if "data" in tensor:
                raise CodecError("it has both 'data' and binary_data_size; send one")
            array = decode_binary_tensor(spec.datatype, shape, chunk)
        elif "data" in tensor:
            array = decode_json_tensor(spec.datatype, shape, tensor["data"])
        else:
            raise CodecError("it needs 'data' or parameters.binary_data_size")
    except CodecError as exc:
        raise CodecError(f"input {spec.name!r}: {exc}") from None
    assert isinstance(array, np.ndarray), f"{spec.datatype} decodes to an array"
    # The input's own parameters (e.g. a waveform's sample_rate) go to the task, less the wire's.
    params = json_object(tensor.get("parameters"), f"parameters of input {spec.name!r}")
    params = {k: v for k, v in params.items() if k != "binary_data_size"}
    return [task.v2_input(spec.name, array[i], params) for i in range(shape[0])]


def _check_batch_shape(name: str, shape: Any) -> None:
    count = element_count(shape)
    if not shape or shape[0] < 1 or count != shape[0]:
        raise CodecError(
            f"input {name!r} has shape {shape}; it must be [N] or [N, 1]: a batch of N >= 1, one element per item"
        )


def _decode_elements(task: Task, name: str, tensor: dict[str, Any], chunk: bytes | None) -> list[bytes]:
    where = f"input {name!r}"
    try:
        if chunk is not None:
            if "data" in tensor:
                raise CodecError("it has both 'data' and binary_data_size; send one")
            return decode_binary_tensor("BYTES", tensor["shape"], chunk)
        if "data" not in tensor:
            raise CodecError("it needs 'data' or parameters.binary_data_size")
        elements = decode_json_tensor("BYTES", tensor["shape"], tensor["data"])
    except CodecError as exc:
        raise CodecError(f"{where}: {exc}") from None
    if _takes_text(task):
        return elements
    return [decode_base64_element(e, f"{where} element {i}") for i, e in enumerate(elements)]


def _takes_text(task: Task) -> bool:
    return bool(task.content_types) and all(ct.startswith("text/") for ct in task.content_types)


async def _run_all(
    inference: Inference,
    task: str,
    name: str,
    items: list[tuple[bytes, str | None]],
    params: GenerationParams,
    request: Request,
) -> list[dict[str, Any]]:
    """Run every element as its own request, all at once so the engine batches them, all on
    the version serving when the batch arrived (the answer names one version, so a model
    switch mid-batch must not mix two).

    The lowest-index element that fails answers the whole request, its error prefixed with
    the element's place. One disconnect watcher serves the batch; leaving cancels every element.
    """
    with inference.pinned(task) as pinned:
        jobs = [asyncio.ensure_future(inference.run(task, data, content_type, params, pinned=pinned))
                for data, content_type in items]  # fmt: skip
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        everything = asyncio.ensure_future(asyncio.gather(*jobs, return_exceptions=True))
        try:
            done, _ = await asyncio.wait({everything, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if everything not in done:
                raise ClientDisconnected()
            outcomes = everything.result()
        finally:
            watcher.cancel()
            for job in jobs:  # a no-op for jobs that already finished
                job.cancel()
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            raise _located(outcome, name, index, len(items))
    return outcomes


def _located(exc: BaseException, name: str, index: int, count: int) -> BaseException:
    """Name the failing element in a client error; other errors pass through unchanged."""
    where = f"input {name!r}" + (f" element {index}" if count > 1 else "")
    if isinstance(exc, InputError):
        return ApiError(exc.status_code, f"{where}: {exc}")
    if isinstance(exc, ApiError) and 400 <= exc.status_code < 500:
        return ApiError(exc.status_code, f"{where}: {exc.message}", exc.headers)
    return exc


def _infer_response(
    service: TaskService,
    version: str | None,
    request_id: str,
    outputs: list[OutputChoice],
    per_item: list[dict[str, Any]],
    accept_encoding: str | None,
) -> Response:
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for choice in outputs:
        tensor, blob = _output_tensor(service.name, choice, [item.get(choice.spec.name) for item in per_item])
        tensors.append(tensor)
        if blob is not None:
            blobs.append(blob)
    header = {"model_name": service.name, "model_version": version, "id": request_id, "outputs": tensors}
    body, header_length = build_body(header, blobs)
    headers = {"Vary": "Accept-Encoding"}
    media_type = "application/json"
    if header_length is not None:
        headers[HEADER_LENGTH] = str(header_length)
        media_type = "application/octet-stream"
    body, encoding = compress_body(body, accept_encoding)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return Response(body, media_type=media_type, headers=headers)


def _output_tensor(model: str, choice: OutputChoice, values: list[Any]) -> tuple[dict[str, Any], bytes | None]:
    """One output tensor of N rows (JSON data or a binary blob) from the task's per-item values."""
    spec = choice.spec
    try:
        if any(v is None for v in values):
            raise ValueError("to_v2_outputs did not return it")
        array = np.asarray(values, dtype=object if spec.datatype == "BYTES" else NUMPY_DTYPES[spec.datatype])
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if not choice.binary:
            tensor["data"] = encode_json_data(spec.datatype, array)
            return tensor, None
        blob = encode_binary_tensor(spec.datatype, array)
    except (CodecError, ValueError, TypeError, KeyError) as exc:
        # The task broke its own declaration: a server-side bug, so no 4xx status.
        raise RuntimeError(f"task {model!r} gave an unusable value for its v2 output {spec.name!r}: {exc}") from exc
    tensor["parameters"] = {"binary_data_size": len(blob)}
    return tensor, blob
