"""One request through a task: preprocess in worker threads, decode in the engine, postprocess.

Shared by the task endpoints, the Open Inference Protocol endpoints and the Ray replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request

from mmserve.plugins.nn.decoding import DecodeResult
from mmserve.plugins.task import Prepared, Task
from mmserve.server.engine import TokenCallback
from mmserve.server.http.errors import ApiError
from mmserve.server.http.json_limits import JsonLimits
from mmserve.server.http.params import GenerationParams, to_decode_params
from mmserve.server.model_updates import ModelUpdater
from mmserve.server.runtime import LoadedModel, Runtime, TaskService


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its sequence was cancelled."""


class Inference:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self.executor = ThreadPoolExecutor(self.settings.preprocess_threads, thread_name_prefix="preprocess")
        self.updater = ModelUpdater(runtime, self.settings.model_poll_interval_s)

    async def start(self) -> None:
        """Load every task's model (at app startup; failures stay per task), then follow aliases."""
        await asyncio.to_thread(self.runtime.load_all)
        self.updater.start()

    async def stop(self) -> None:
        await self.updater.stop()
        self.runtime.stop()
        self.shutdown()

    async def load_model(self, task: str) -> dict[str, Any]:
        """Load the version the task's alias points at now and switch to it (model repository API)."""
        outcome = await self.updater.update(task)
        return {"name": task, "version": outcome.version, "previous_version": outcome.previous,
                "switched": outcome.switched}

    async def unload_model(self, task: str) -> None:
        """Stop serving `task` (503 until loaded again); requests in flight finish first."""
        self.runtime.services[task].unload()

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a file at the upload limit, base64-encoded, plus form overhead."""
        return self.settings.max_upload_bytes * 4 // 3 + 64 * 1024

    @property
    def json_limits(self) -> JsonLimits:
        """Limits on every JSON body parsed (task routes, v2): bytes and nesting depth."""
        max_bytes = self.settings.max_json_bytes or self.max_body_bytes
        return JsonLimits(max_bytes=max_bytes, max_depth=self.settings.max_json_depth)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def refresh(self) -> None:
        """Bring the services' status up to date before it is reported (in-process: always is)."""

    def describe(self, service: TaskService) -> dict[str, Any]:
        """One task's entry in `GET /v1/tasks`."""
        return {
            "name": service.name,
            "plugin": service.plugin,
            "status": service.status,
            "error": service.error,
            "update_error": service.update_error,
            "model": {
                "version": service.version,
                "alias": service.resolved.alias if service.resolved else None,
                "from_cache": service.resolved.from_cache if service.resolved else None,
            },
            "device": service.device,
            "queue_depth": service.engine.queue_depth if service.engine else 0,
            "active_sequences": service.engine.active_sequences if service.engine else 0,
        }

    def service(self, task: str) -> TaskService:
        """The ready service for `task`: 404 if unknown, 503 if its model is not loaded."""
        service = self.runtime.services.get(task)
        if service is None:
            raise ApiError(404, f"unknown task {task!r}; served tasks: {sorted(self.runtime.services)}")
        if not service.ready:
            reason = service.error or "its model is still loading"
            raise ApiError(503, f"task {task!r} is not ready: {reason}", {"Retry-After": "5"})
        return service

    async def preprocess(
        self, service: TaskService, loaded: LoadedModel, data: bytes, content_type: str | None, params: GenerationParams
    ) -> Any:
        loop = asyncio.get_running_loop()
        limits = self.settings.task_input_limits(service.name)
        task, model = service.task, loaded.model
        work = functools.partial(task.preprocess, data, content_type, model, limits, **task_options(task, params))
        return await loop.run_in_executor(self.executor, work)

    async def decode(
        self,
        service: TaskService,
        loaded: LoadedModel,
        inputs: Any,
        params: GenerationParams,
        request: Request | None = None,
        on_token: TokenCallback | None = None,
    ) -> DecodeResult:
        """Decode in the engine; cancels the sequence on timeout or client disconnect."""
        decode_params = to_decode_params(params, service.task.default_max_length, self.settings)
        if service.task.keeps_attention:
            decode_params = dataclasses.replace(decode_params, keep_attention=True)
        model_input = inputs.inputs if isinstance(inputs, Prepared) else inputs
        generation = asyncio.ensure_future(loaded.engine.generate(model_input, decode_params, on_token))
        try:
            return await await_or_abandon(generation, request, self.settings.request_timeout_s, generation.cancel)
        except TimeoutError:
            raise ApiError(
                504, f"task {service.name!r} did not answer within {self.settings.request_timeout_s:g} s"
            ) from None

    def postprocess(
        self,
        service: TaskService,
        loaded: LoadedModel,
        result: DecodeResult,
        params: GenerationParams,
        inputs: Any = None,
    ) -> dict[str, Any]:
        task = service.task
        extra = task_options(task, params)
        if isinstance(inputs, Prepared):  # the request's own context, e.g. sampled frame times
            extra["context"] = inputs.context
        output = task.postprocess(result, loaded.model, params.attention, **extra)
        output["model"] = {"name": service.name, "version": loaded.version}  # the version that produced it
        return output

    async def run(
        self,
        task: str,
        data: bytes,
        content_type: str | None,
        params: GenerationParams,
        request: Request | None = None,
    ) -> dict[str, Any]:
        """The JSON result for one input, all of it from the version serving when it arrived."""
        service = self.service(task)
        with service.loaded.lease() as loaded:
            inputs = await self.preprocess(service, loaded, data, content_type, params)
            result = await self.decode(service, loaded, inputs, params, request)
            return self.postprocess(service, loaded, result, params, inputs)

    async def open_stream(
        self, task: str, data: bytes, content_type: str | None, params: GenerationParams
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Validate and preprocess now (so bad input is still a 4xx), then return an iterator
        of ("token", {...}) events and a final ("result", {...}) or ("error", {...})."""
        service = self.service(task)
        loaded = service.loaded
        loaded.acquire()  # returned when the stream ends (the generator's finally)
        try:
            inputs = await self.preprocess(service, loaded, data, content_type, params)
        except BaseException:
            loaded.release()
            raise
        return self._stream(service, loaded, inputs, params)

    async def _stream(
        self, service: TaskService, loaded: LoadedModel, inputs: Any, params: GenerationParams
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        tokens: asyncio.Queue[int] = asyncio.Queue()
        generation = asyncio.ensure_future(self.decode(service, loaded, inputs, params, None, tokens.put_nowait))
        index = 0
        try:
            while True:
                getter = asyncio.ensure_future(tokens.get())
                done, _ = await asyncio.wait({getter, generation}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield "token", {"index": index, "token": service.task.token_text(getter.result(), loaded.model)}
                    index += 1
                    continue
                getter.cancel()
                while not tokens.empty():  # tokens that arrived together with the final result
                    token = tokens.get_nowait()
                    yield "token", {"index": index, "token": service.task.token_text(token, loaded.model)}
                    index += 1
                try:
                    result = generation.result()
                except ApiError as exc:
                    yield "error", {"error": exc.message, "status": exc.status_code}
                    return
                except Exception as exc:
                    yield "error", {"error": f"{type(exc).__name__}: {exc}", "status": 500}
                    return
                yield "result", self.postprocess(service, loaded, result, params, inputs)
                return
        finally:
            # A client that disconnects mid-stream closes this generator: free its decode slot.
            generation.cancel()
            loaded.release()


def task_options(task: Task, params: GenerationParams) -> dict[str, Any]:
    """`{"options": <the task's request_options>}` for a task that declares them, else {}:
    tasks without options keep the plain preprocess / postprocess signatures."""
    if task.request_options is None:
        return {}
    return {"options": task.request_options.model_validate(params.options)}


async def await_or_abandon(
    work: asyncio.Future, request: Request | None, timeout_s: float, abandon: Callable[[], None]
) -> Any:
    """The result of `work`, unless the client disconnects first (ClientDisconnected), the
    timeout passes (TimeoutError) or the caller is cancelled; in each case `abandon()` runs
    so the work stops holding a decode slot."""
    watcher = asyncio.ensure_future(wait_for_disconnect(request)) if request is not None else None
    waiters = {work} if watcher is None else {work, watcher}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandon()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if work in done:
        return work.result()
    abandon()
    if watcher is not None and watcher in done:
        raise ClientDisconnected()
    raise TimeoutError()


async def wait_for_disconnect(request: Request) -> None:
    # After the body is read, the next ASGI message on a live connection is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
