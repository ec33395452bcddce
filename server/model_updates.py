"""Model updates with zero downtime: follow each task's MLflow alias and switch versions live.

Every `model_poll_interval_s` the updater asks MLflow where each task's alias points. When it
moved, the new version is resolved, loaded and its engine started beside the old one (in a
worker thread, while the old one keeps serving), then the task is pointed at it in one
assignment on the event loop. New requests go to the new version; requests in flight hold a
lease on the old one and finish there; the old engine stops when the last lease returns
(`LoadedModel.retire`). A failed load or an unreachable MLflow leaves the old version serving
and is logged and reported (`update_error`), never a restart or an outage.

`update(task)` is also what `POST /v2/repository/models/{m}/load` calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mmserve.server.runtime import Runtime, TaskService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateOutcome:
    task: str
    previous: str | None  # the version served before
    version: str | None  # the version served now
    switched: bool


class ModelUpdater:
    def __init__(self, runtime: Runtime, interval_s: float):
        self.runtime = runtime
        self.interval_s = interval_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._watcher: asyncio.Task | None = None
        self._unreachable: set[str] = set()  # tasks whose last check could not reach MLflow

    def start(self) -> None:
        """Poll in the background (nothing when the interval is 0)."""
        if self.interval_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except (asyncio.CancelledError, Exception):
                pass
            self._watcher = None

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for service in list(self.runtime.services.values()):
                if service.status in ("ready", "failed"):  # an unloaded task stays unloaded
                    await self.check(service)

    async def check(self, service: TaskService) -> None:
        """Switch `service` if its alias moved; log, never raise (the old version serves on)."""
        alias = self.runtime.settings.task(service.name).alias
        try:
            target = await asyncio.to_thread(self.runtime.registry.current_version, service.name, alias)
        except Exception as exc:
            if service.name not in self._unreachable:
                log.warning("cannot check %s@%s in MLflow (%s); serving version %s", service.name, alias, exc,
                            service.version)
                self._unreachable.add(service.name)
            return
        self._unreachable.discard(service.name)
        if target == service.version and service.ready:
            return
        try:
            await self.update(service.name)
        except Exception:
            log.exception("updating %s to version %s failed; version %s serves on", service.name, target,
                          service.version)

    async def update(self, task: str) -> UpdateOutcome:
        """Load the version `task@alias` points at now and switch to it, unless already served.

        Raises when the new version cannot be loaded; the task keeps serving what it served.
        """
        service = self.runtime.services[task]
        lock = self._locks.setdefault(task, asyncio.Lock())
        async with lock:  # one switch at a time per task
            previous = service.version if service.ready else None
            try:
                loaded = await asyncio.to_thread(self.runtime.prepare, service)
            except Exception as exc:
                service.update_error = f"{type(exc).__name__}: {exc}"
                raise
            if loaded.version == previous:  # the alias moved back, or nothing changed
                loaded.retire()
                return UpdateOutcome(task, previous, previous, switched=False)
            old = service.install(loaded)  # one assignment: new requests get the new version
            if old is not None:
                old.retire()  # stops once its in-flight requests are answered
            log.info("task %s switched from version %s to %s", task, previous, loaded.version)
            return UpdateOutcome(task, previous, loaded.version, switched=True)
