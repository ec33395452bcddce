"""The ingress side of the Ray backend: the `Inference` surface, answered by task deployments.

The routes call `service`, `run` and `open_stream` exactly as on the embedded server; here
each call goes through the task's `DeploymentHandle` to a replica that preprocesses, decodes
and postprocesses. The ingress holds no model: its `TaskService`s carry the task's metadata
(for routes and OpenAPI) and a status mirrored from the replicas' `describe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request

from mmserve.registry.models import ResolvedModel
from mmserve.server.http.errors import ApiError
from mmserve.server.http.params import GenerationParams
from mmserve.server.inference import Inference, await_or_abandon
from mmserve.server.rayserve.ray_replica import ACCEPTED, REJECTED
from mmserve.server.runtime import Runtime, TaskService

log = logging.getLogger(__name__)

# The replica enforces request_timeout_s itself (504); the ingress waits a little longer so
# that answer, not a second timeout here, reaches the client.
TIMEOUT_MARGIN_S = 5.0
# How often the ingress asks replicas about a task that is still loading.
LOADING_REFRESH_S = 0.5
# A replica that died or is restarting: the client may retry at once on another one.
_REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class RayInference(Inference):
    def __init__(self, runtime: Runtime, handles: dict[str, DeploymentHandle], refresh_interval_s: float = 5.0):
        super().__init__(runtime)
        missing = sorted(set(runtime.services) - set(handles))
        assert not missing, f"no deployment handle for task(s) {missing}"
        self.handles = handles
        self.refresh_interval_s = refresh_interval_s
        self.replicas: dict[str, list[dict[str, Any]]] = {name: [] for name in runtime.services}
        self._refresher: asyncio.Task | None = None

    # ----- lifecycle and health ----------------------------------------------------------------

    async def start(self) -> None:
        # Replicas load their own models; the ingress only learns how that went.
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self.shutdown()

    async def load_model(self, task: str) -> dict[str, Any]:
        # Each replica would have to switch; until replicas follow aliases, say so plainly.
        raise ApiError(501, "the model repository API is not available on the Ray backend; redeploy to switch versions")

    async def unload_model(self, task: str) -> None:
        raise ApiError(501, "the model repository API is not available on the Ray backend")

    async def refresh(self) -> None:
        """Ask every running replica of every task for its status (a broadcast per task)."""
        await asyncio.gather(*(self._refresh_task(name) for name in self.runtime.services))

    async def _refresh_forever(self) -> None:
        while True:
            # Serve starts the ingress and the task replicas together: while a task is still
            # loading, look again soon, so it does not answer 503 for long after it is ready.
            loading = any(s.status == "loading" for s in self.runtime.services.values())
            await asyncio.sleep(LOADING_REFRESH_S if loading else self.refresh_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep the last known status; the next round may succeed
                log.exception("refreshing task status from the replicas failed")

    async def _refresh_task(self, name: str) -> None:
        try:
            replicas = await _describe_replicas(self.handles[name], timeout_s=10.0)
        except Exception as exc:
            log.warning("could not reach the replicas of task %s: %s", name, exc)
            replicas = []
        self.replicas[name] = replicas
        _mirror(self.runtime.services[name], replicas)

    def describe(self, service: TaskService) -> dict[str, Any]:
        entry = super().describe(service)
        replicas = self.replicas.get(service.name, [])
        entry["queue_depth"] = sum(r["queue_depth"] for r in replicas)
        entry["active_sequences"] = sum(r["active_sequences"] for r in replicas)
        entry["replicas"] = replicas
        return entry

    # ----- requests ------------------------------------------------------------------------------

    def check_capacity(self, task: str) -> None:
        # Replicas and Serve's max_queued_requests shed; the ingress has no queue to read.
        self.service(task)

    @contextlib.contextmanager
    def pinned(self, task: str) -> Iterator[None]:
        # Versions live in the replicas; the ingress cannot hold one (see routes_v2._produced_by).
        self.service(task)
        yield None

    async def run(
        self,
        task: str,
        data: bytes,
        content_type: str | None,
        params: GenerationParams,
        request: Request | None = None,
        pinned: Any = None,
    ) -> dict[str, Any]:
        """The JSON result for one input, computed by one of the task's replicas."""
        self.service(task)
        for attempt in (1, 2):
            response = self.handles[task].run.remote(data, content_type, params.model_dump())
            try:
                reply = await self._await(task, response, request)
                break
            except _REPLICA_GONE as exc:
                # Inference has no side effects, so one retry on another replica is safe.
                if attempt == 2:
                    raise _replica_gone(task, exc) from None
                log.warning("a replica of task %s went away mid-request (%s); retrying once", task, exc)
            except BackPressureError:
                raise _overloaded(task) from None
        if "error" in reply:
            raise _api_error(reply["error"])
        return reply["output"]

    async def open_stream(
        self, task: str, data: bytes, content_type: str | None, params: GenerationParams
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Wait until the replica accepted the input (so bad input is still a 4xx), then relay."""
        self.service(task)
        events = self.handles[task].options(stream=True).stream.remote(data, content_type, params.model_dump())
        try:
            event, payload = await asyncio.wait_for(
                events.__anext__(), self.settings.request_timeout_s + TIMEOUT_MARGIN_S
            )
        except TimeoutError:
            events.cancel()
            raise _timed_out(task, self.settings.request_timeout_s) from None
        except StopAsyncIteration:
            raise ApiError(500, f"a replica of task {task!r} ended the stream without answering") from None
        except BackPressureError:
            raise _overloaded(task) from None
        except _REPLICA_GONE as exc:
            raise _replica_gone(task, exc) from None
        if event == REJECTED:
            raise _api_error(payload)
        assert event == ACCEPTED, f"unexpected first stream event {event!r}"
        return _relay(task, events)

    async def _await(self, task: str, response: DeploymentResponse, request: Request | None) -> dict[str, Any]:
        """The replica's reply; cancels the replica's work on timeout or client disconnect."""
        reply = asyncio.ensure_future(_resolve(response))

        def abandon() -> None:
            response.cancel()
            reply.cancel()

        try:
            timeout = self.settings.request_timeout_s + TIMEOUT_MARGIN_S
            return await await_or_abandon(reply, request, timeout, abandon)
        except TimeoutError:
            raise _timed_out(task, self.settings.request_timeout_s) from None


async def _relay(task: str, events) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    try:
        async for event, payload in events:
            yield event, payload
    except _REPLICA_GONE as exc:
        yield "error", {"error": _replica_gone(task, exc).message, "status": 503}
    finally:
        # The client left (this generator was closed) or the stream ended: stop the replica's side.
        events.cancel()


async def _resolve(response: DeploymentResponse) -> Any:
    return await response


async def _describe_replicas(handle: DeploymentHandle, timeout_s: float) -> list[dict[str, Any]]:
    """`describe()` of every running replica, skipping those that fail to answer."""
    broadcast = getattr(handle, "broadcast", None)
    if broadcast is None:  # Ray before handle.broadcast: one replica speaks for all
        return [await asyncio.wait_for(_resolve(handle.describe.remote()), timeout_s)]
    answers = await broadcast("describe").results_async(timeout_s=timeout_s, return_exceptions=True)
    return sorted((a for a in answers if isinstance(a, dict)), key=lambda a: a["replica_id"])


def _mirror(service: TaskService, replicas: list[dict[str, Any]]) -> None:
    """Copy the replicas' health onto the ingress's `TaskService`: ready if any replica is."""
    ready = [r for r in replicas if r["status"] == "ready"]
    if ready:
        chosen = ready[0]
        service.status, service.error = "ready", None
    elif replicas:
        chosen = replicas[0]
        service.status, service.error = chosen["status"], chosen["error"]
    else:
        service.status, service.error = "loading", "no replica is running yet"
        return
    model = chosen["model"]
    service.device = chosen["device"]
    service.resolved = None
    if model["version"] is not None:
        service.resolved = ResolvedModel(
            service.name, model["alias"], model["version"], Path(model["path"]), model["from_cache"]
        )


def _api_error(payload: dict[str, Any]) -> ApiError:
    return ApiError(payload["status"], payload["message"], payload.get("headers"))


def _replica_gone(task: str, exc: BaseException) -> ApiError:
    message = f"a replica of task {task!r} is unavailable ({type(exc).__name__}); retry"
    return ApiError(503, message, {"Retry-After": "1"})


def _overloaded(task: str) -> ApiError:
    # Serve's max_queued_requests: the same answer as a full engine queue in embedded mode.
    return ApiError(503, f"task {task!r} is overloaded: its request queue is full; retry later", {"Retry-After": "1"})


def _timed_out(task: str, timeout_s: float) -> ApiError:
    return ApiError(504, f"task {task!r} did not answer within {timeout_s:g} s")
