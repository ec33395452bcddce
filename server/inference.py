"""One request through a task: preprocess in worker threads, decode in the engine, postprocess.

Shared by the task endpoints, the Open Inference Protocol endpoints and the Ray replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request

from mmserve.plugins.errors import PayloadTooLarge
from mmserve.plugins.nn.decoding import DecodeResult
from mmserve.plugins.task import Prepared, Segments, Task
from mmserve.server.engine import TokenCallback
from mmserve.server.http.errors import ApiError, status_for
from mmserve.server.http.json_limits import JsonLimits
from mmserve.server.http.params import GenerationParams, to_decode_params
from mmserve.server.model_updates import ModelUpdater
from mmserve.server.runtime import LoadedModel, Runtime, TaskService

log = logging.getLogger(__name__)

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

    def check_capacity(self, task: str) -> None:
        """Shed a request (503 + Retry-After) before its body is even read when the task's
        queue is full: under overload, parsing uploads only to refuse them starves the
        requests that were accepted. Reserves nothing; `run` admits for real."""
        loaded = self.service(task).loaded
        if loaded is not None:
            loaded.engine.check_capacity()

    async def preprocess(
        self, service: TaskService, loaded: LoadedModel, data: bytes, content_type: str | None, params: GenerationParams
    ) -> Any:
        loop = asyncio.get_running_loop()
        limits = self.settings.task_input_limits(service.name)
        if len(data) > limits.max_upload_bytes:  # every task, whether or not its plugin checks
            raise PayloadTooLarge(f"the upload is {len(data)} bytes, over the limit of {limits.max_upload_bytes} bytes")
        task, model = service.task, loaded.model
        work = functools.partial(task.preprocess, data, content_type, model, limits, **task_options(task, params))
        return await loop.run_in_executor(self.executor, work)

    async def admitted_preprocess(
        self, service: TaskService, loaded: LoadedModel, data: bytes, content_type: str | None, params: GenerationParams
    ) -> Any:
        """Preprocess holding a place in the engine's queue (503 + Retry-After when it is full),
        so overload is shed before any decoding work and the preprocessing backlog is bounded.
        On success the place passes to `decode(..., admitted=True)`."""
        loaded.engine.admit()
        try:
            return await self.preprocess(service, loaded, data, content_type, params)
        except BaseException:
            loaded.engine.withdraw()
            raise

    def start_decode(
        self,
        service: TaskService,
        loaded: LoadedModel,
        inputs: Any,
        params: GenerationParams,
        on_token: TokenCallback | None = None,
        admitted: bool = False,
    ) -> tuple[asyncio.Future, Callable[[], None]]:
        """Queue the input in the engine now; returns the result's future and a function that
        abandons the request (frees its decode slot), safe to call at any time and repeatedly."""
        decode_params = to_decode_params(params, service.task, self.settings)
        if service.task.keeps_attention:
            decode_params = dataclasses.replace(decode_params, keep_attention=True)
        model_input = inputs.inputs if isinstance(inputs, Prepared) else inputs
        engine = loaded.engine
        submitted = engine.submit(model_input, decode_params, on_token, admitted)
        generation = asyncio.ensure_future(engine.result(submitted))

        def abandon() -> None:
            generation.cancel()
            engine.cancel(submitted)  # also when the future was cancelled before it ever ran

        return generation, abandon

    async def await_decode(
        self, service: TaskService, generation: asyncio.Future, abandon: Callable[[], None], request: Request | None
    ) -> DecodeResult:
        try:
            return await await_or_abandon(generation, request, self.settings.request_timeout_s, abandon)
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

    @contextlib.contextmanager
    def pinned(self, task: str) -> Iterator[LoadedModel | None]:
        """Hold the version serving `task` now, so that several `run(..., pinned=...)` calls
        (a v2 batch) are all answered by it even if the task switches versions meanwhile."""
        service = self.service(task)
        with service.loaded.lease() as loaded:
            yield loaded

    async def run(
        self,
        task: str,
        data: bytes,
        content_type: str | None,
        params: GenerationParams,
        request: Request | None = None,
        pinned: LoadedModel | None = None,
    ) -> dict[str, Any]:
        """The JSON result for one input, all of it from the version serving when it arrived
        (or from `pinned`, a version held by the caller)."""
        service = self.service(task)
        with (pinned or service.loaded).lease() as loaded:
            inputs = await self.admitted_preprocess(service, loaded, data, content_type, params)
            parts = inputs.parts if isinstance(inputs, Segments) else [inputs]
            generations, abandon = self.start_parts(service, loaded, parts, params)
            results = await self.await_decode(service, all_or_abandon(generations, abandon), abandon, request)
            if isinstance(inputs, Segments):
                return self.join(service, loaded, results, params, inputs)
            return self.postprocess(service, loaded, results[0], params, inputs)

    def start_parts(
        self,
        service: TaskService,
        loaded: LoadedModel,
        parts: list[Any],
        params: GenerationParams,
        token_callbacks: list[TokenCallback] | None = None,
    ) -> tuple[list[asyncio.Future], Callable[[], None]]:
        """Queue the parts of one request's input (one, or a Segments input's) at once, so they
        decode side by side: the first in the request's admitted place, the others as they fit
        the queue. Returns their futures and one function that abandons them all."""
        started: list[tuple[asyncio.Future, Callable[[], None]]] = []
        if self.runtime.metrics is not None:
            self.runtime.metrics.segments.labels(service.name).observe(len(parts))

        def abandon() -> None:
            for _, stop in started:
                stop()

        try:
            for i, part in enumerate(parts):
                callback = token_callbacks[i] if token_callbacks else None
                started.append(self.start_decode(service, loaded, part, params, callback, admitted=i == 0))
        except BaseException:
            abandon()
            raise
        return [generation for generation, _ in started], abandon

    def join(
        self, service: TaskService, loaded: LoadedModel, results: list[DecodeResult], params: GenerationParams,
        segments: Segments,
    ) -> dict[str, Any]:  # fmt: skip
        """The task's one answer for a Segments input, from its parts' decoded sequences."""
        outputs = [self.postprocess(service, loaded, r, params, part) for r, part in zip(results, segments.parts)]
        output = service.task.join_segments(outputs, segments)
        output["model"] = outputs[0]["model"]
        return output

    async def open_stream(
        self, task: str, data: bytes, content_type: str | None, params: GenerationParams
    ) -> EventStream:
        """Validate and preprocess now (so bad input is still a 4xx) and start decoding; return
        an iterator of ("token", {...}) events and a final ("result", {...}) or ("error", {...}).

        The stream holds its version's lease and decode slot until it ends or is closed, and
        one that nobody starts reading within the request timeout (its client went away before
        the answer began) gives both back by itself.
        """
        service = self.service(task)
        loaded = service.loaded
        loaded.acquire()  # returned by the EventStream, however it ends
        try:
            inputs = await self.admitted_preprocess(service, loaded, data, content_type, params)
            parts = inputs.parts if isinstance(inputs, Segments) else [inputs]
            queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in parts]
            generations, abandon = self.start_parts(service, loaded, parts, params, [q.put_nowait for q in queues])
        except BaseException:
            loaded.release()
            raise
        decoded = asyncio.ensure_future(self.await_decode(service, all_or_abandon(generations, abandon), abandon, None))

        def release() -> None:
            abandon()
            decoded.cancel()
            loaded.release()

        events = self._stream(service, loaded, inputs, params, decoded, generations, queues)
        return EventStream(events, release, self.settings.request_timeout_s)

    async def _stream(
        self,
        service: TaskService,
        loaded: LoadedModel,
        inputs: Any,
        params: GenerationParams,
        decoded: asyncio.Future,
        generations: list[asyncio.Future],
        queues: list[asyncio.Queue],
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Each part's tokens in order (a Segments input's parts decode side by side; a later
        part's tokens wait until the earlier ones are sent), then the answer or the error.
        `decoded` is all parts' results, or the failure (a part's error, the request timeout)."""
        index = 0
        task = service.task
        items = task.stream_items(loaded.model)  # outputs -> event payloads (one per token, or per unit)
        try:
            for part, (generation, tokens) in enumerate(zip(generations, queues)):
                separate = part > 0 and index > 0 and task.segment_separator is not None
                while True:
                    getter = asyncio.ensure_future(tokens.get())
                    done, _ = await asyncio.wait({getter, generation, decoded}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                    pending = [getter.result()] if getter in done else []
                    while getter not in done and not tokens.empty():  # tokens that came with the part's result
                        pending.append(tokens.get_nowait())
                    for item in pending:
                        for payload in items(item):
                            if separate:
                                yield "token", {"index": index, "token": task.segment_separator}
                                index, separate = index + 1, False
                            yield "token", {"index": index, "token": payload}
                            index += 1
                    if getter not in done:
                        break
                if decoded.done() and (decoded.cancelled() or decoded.exception() is not None):
                    break  # a part failed or the request timed out: no more tokens to wait for
            try:
                results = await decoded
            except Exception as exc:
                status, message, _ = status_for(exc)
                yield "error", {"error": message, "status": status}
                return
            if isinstance(inputs, Segments):
                yield "result", self.join(service, loaded, results, params, inputs)
            else:
                yield "result", self.postprocess(service, loaded, results[0], params, inputs)
        finally:
            # A client that disconnects mid-stream closes this generator: free its decode slots.
            decoded.cancel()
            for generation in generations:
                generation.cancel()


class EventStream:
    """A streamed answer's events; gives back its lease and decode slot (`release`) exactly
    once: when the events end, when it is closed (client disconnect), or, if nobody has
    started reading it `start_timeout_s` after it opened, by itself."""

    def __init__(self, events: AsyncIterator[Any], release: Callable[[], None], start_timeout_s: float):
        self._events = events
        self._release: Callable[[], None] | None = release
        self._timer = asyncio.get_running_loop().call_later(start_timeout_s, self._expire)

    @property
    def released(self) -> bool:
        return self._release is None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Any:
        self._timer.cancel()
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._timer.cancel()
        try:
            await self._events.aclose()
        finally:
            self._finish()

    def _expire(self) -> None:
        if self._release is not None:
            log.warning("a streamed answer was never read; releasing its model version and decode slot")
            self._finish()
            asyncio.ensure_future(self._events.aclose())

    def _finish(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def task_options(task: Task, params: GenerationParams) -> dict[str, Any]:
    """`{"options": <the task's request_options>}` for a task that declares them, else {}:
    tasks without options keep the plain preprocess / postprocess signatures."""
    if task.request_options is None:
        return {}
    return {"options": task.request_options.model_validate(params.options)}


def all_or_abandon(generations: list[asyncio.Future], abandon: Callable[[], None]) -> asyncio.Future:
    """A future of all `generations`' results, in order; the first failure abandons the others."""

    async def gather() -> list[Any]:
        try:
            return await asyncio.gather(*generations)
        except BaseException:
            abandon()
            raise

    return asyncio.ensure_future(gather())


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
