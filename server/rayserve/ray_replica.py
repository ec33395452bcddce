"""One Ray Serve replica of one task: the embedded service, built the same way, behind a handle.

The replica discovers plugins, resolves `models:/<task>@<alias>` through the model registry,
loads the model on the GPU Ray gave it (CPU when none) and runs the same engine as the
embedded server. Preprocessing and decoding happen here; the ingress only relays bytes.

Replies cross the Ray boundary as plain data: an error is returned as
`{"error": {"status", "message", "headers"}}` rather than raised, so the ingress can answer
with the right HTTP status without unpickling exception classes or reading Ray tracebacks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
import torch
from ray import serve

from mmserve.server.http.errors import status_for
from mmserve.server.http.params import GenerationParams
from mmserve.server.inference import Inference
from mmserve.server.runtime import Runtime
from mmserve.server.settings import resolved_settings

log = logging.getLogger(__name__)

# The first event of every stream: preprocessing passed, tokens follow.
ACCEPTED = "accepted"
# The first (and only) event of a stream whose input was refused; the payload is an error.
REJECTED = "rejected"


def replica_device() -> torch.device:
    """CUDA when Ray assigned this replica a GPU and torch can see one, else CPU.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned ids, so the assigned GPU is always `cuda`
    (index 0) from inside the replica, whatever its id on the node.
    """
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The status, message and headers the embedded app would answer `exc` with."""
    status, message, headers = status_for(exc)
    if status >= 500 and not headers:
        log.error("unexpected error in a task replica", exc_info=exc)
    return {"status": status, "message": message, "headers": headers}


class TaskReplica:
    """The Serve deployment class of one task (one instance per replica)."""

    def __init__(self, task: str, settings: dict[str, Any]):
        self.settings = resolved_settings(settings)
        runtime = Runtime.from_settings(self.settings)
        if task not in runtime.services:
            raise LookupError(f"task {task!r} is not provided by any plugin here; found {sorted(runtime.services)}")
        # This replica serves one task: drop the others so nothing else is loaded or reported.
        runtime.services = {task: runtime.services[task]}
        self.service = runtime.services[task]
        self.runtime = runtime
        # A task whose model fails to load stays up and reports why, like the embedded server:
        # restarting it would fail the same way, and the ingress answers 503 with the reason.
        runtime.load(self.service, replica_device())
        self.inference = Inference(runtime)

    def _follow_alias(self) -> None:
        # Each replica follows its task's MLflow alias itself (model_poll_interval_s) and switches
        # with zero downtime like the embedded server. Started from the first request, on the
        # replica's event loop (Serve gives __init__ none); idempotent.
        self.inference.updater.start()

    async def run(self, data: bytes, content_type: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """`{"output": <task JSON>}` or `{"error": {...}}` for one input."""
        self._follow_alias()
        try:
            generation = GenerationParams(**params)
            return {"output": await self.inference.run(self.service.name, data, content_type, generation)}
        except Exception as exc:
            return {"error": error_payload(exc)}

    async def stream(
        self, data: bytes, content_type: str | None, params: dict[str, Any]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(ACCEPTED, {}) then the embedded stream's events, or one (REJECTED, error)."""
        self._follow_alias()
        try:
            generation = GenerationParams(**params)
            events = await self.inference.open_stream(self.service.name, data, content_type, generation)
        except Exception as exc:
            yield REJECTED, error_payload(exc)
            return
        yield ACCEPTED, {}
        try:
            async for event in events:
                yield event
        finally:
            # Cancelled by the ingress (its client left): free the sequence's decode slot now.
            await events.aclose()

    def describe(self) -> dict[str, Any]:
        """This replica's view of its task: health, model version, device and identity."""
        service, resolved = self.service, self.service.resolved
        context = serve.get_replica_context()
        return {
            "status": service.status,
            "error": service.error,
            "model": {
                "version": service.version,
                "alias": resolved.alias if resolved else None,
                "from_cache": resolved.from_cache if resolved else None,
                "path": str(resolved.path) if resolved else None,
            },
            "device": service.device,
            "gpu_ids": list(ray.get_gpu_ids()),
            "replica_id": context.replica_id.unique_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "queue_depth": service.engine.queue_depth if service.engine else 0,
            "active_sequences": service.engine.active_sequences if service.engine else 0,
        }

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: let accepted requests finish decoding.
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.stop()
        inference = getattr(self, "inference", None)
        if inference is not None:
            inference.shutdown()
