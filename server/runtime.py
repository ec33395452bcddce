"""Everything a server process serves: discovered tasks, their models and engines.

Built once per process from settings. A task whose model cannot be loaded is kept, marked
failed with the reason, so readiness endpoints tell the truth while the other tasks serve.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.task import Task
from mmserve.registry.discovery import Discovery, discover
from mmserve.registry.models import ModelRegistry, ResolvedModel
from mmserve.server.engine import TaskEngine
from mmserve.server.metrics import ServerMetrics
from mmserve.server.settings import Settings

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LoadedModel:
    """One model version in service: its model, engine and origin, swapped into a task whole.

    Requests hold a lease for their whole life (preprocess, decode, postprocess), so a request
    finishes on the version it started with. A retired version's engine stops once its last
    lease is returned: in-flight requests finish, none is refused.
    """

    def __init__(self, model: EncoderDecoder, resolved: ResolvedModel, engine: TaskEngine, device: str):
        self.model, self.resolved, self.engine, self.device = model, resolved, engine, device
        self._lock = threading.Lock()
        self._leases = 0
        self._retired = False
        self.stopped = threading.Event()  # set once the engine has stopped

    @property
    def version(self) -> str:
        return self.resolved.version

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            last = self._retired and self._leases == 0
        if last:
            self._stop_engine()

    def retire(self) -> None:
        """Take no new leases' work (the task points elsewhere); stop once the last one returns."""
        with self._lock:
            self._retired = True
            idle = self._leases == 0
        if idle:
            self._stop_engine()

    def _stop_engine(self) -> None:
        # stop() joins the worker threads; never block the event loop on it.
        def stop() -> None:
            self.engine.stop()
            self.stopped.set()
            log.info("stopped %s version %s", self.engine.task, self.version)

        threading.Thread(target=stop, name=f"retire-{self.engine.task}", daemon=True).start()


@dataclass
class TaskService:
    """One task as served: its plugin, model version, engine and health.

    `loaded` is the version requests use; `model`, `resolved`, `engine` and `device` mirror it
    for reporting (the Ray ingress sets them from its replicas, with no `loaded` of its own).
    """

    task: Task
    plugin: str
    status: Literal["loading", "ready", "failed", "unloaded"] = "loading"
    error: str | None = None
    model: EncoderDecoder | None = None
    resolved: ResolvedModel | None = None
    engine: TaskEngine | None = None
    device: str = "cpu"
    loaded: LoadedModel | None = None
    update_error: str | None = None  # why the last model update failed (the old version serves on)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def version(self) -> str | None:
        return self.resolved.version if self.resolved else None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def install(self, loaded: LoadedModel) -> LoadedModel | None:
        """Point the task at `loaded` in one step and return the version it replaced (not retired)."""
        previous, self.loaded = self.loaded, loaded
        self.model, self.resolved, self.engine, self.device = loaded.model, loaded.resolved, loaded.engine, loaded.device
        self.status, self.error, self.update_error = "ready", None, None
        return previous

    def unload(self) -> None:
        """Serve nothing (503 until loaded again); in-flight requests finish first."""
        previous, self.loaded = self.loaded, None
        self.model, self.engine = None, None
        self.status, self.error = "unloaded", "unloaded through the model repository API"
        if previous is not None:
            previous.retire()


@dataclass
class Runtime:
    settings: Settings
    discovery: Discovery
    registry: ModelRegistry
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    services: dict[str, TaskService] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Discover plugins (raises DuplicateTaskError) and prepare a service per task."""
        if settings.torch_threads:
            # Decode steps are small matrix products: spreading each over OpenMP threads, while
            # preprocessing threads run torch ops too, costs far more in spinning than it gains.
            torch.set_num_threads(settings.torch_threads)
        _, found = discover(allow=settings.plugins or None, modules=settings.plugin_modules)
        runtime = cls(settings=settings, discovery=found, registry=ModelRegistry(settings.data_dir))
        for name, task in found.tasks.items():
            runtime.services[name] = TaskService(task=task, plugin=found.owners[name])
        return runtime

    def load_all(self) -> None:
        """Resolve and load every task's model, then start its engine; failures stay per task."""
        for service in self.services.values():
            self.load(service)

    def load(self, service: TaskService, device: torch.device | None = None) -> None:
        """Load `service`'s model on `device` (default: from its settings) and start its engine."""
        try:
            if self.settings.register_bundled:
                self._ensure_bundled(service)
            previous = service.install(self.prepare(service, device))
            if previous is not None:
                previous.retire()
        except Exception as exc:
            service.status, service.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("task %s failed to load its model", service.name)

    def _ensure_bundled(self, service: TaskService) -> None:
        alias = self.settings.task(service.name).alias
        try:
            self.registry.ensure_bundled(service.name, service.task.bundled_artifacts(), alias)
        except Exception as exc:
            # MLflow is down: what the local cache holds may still serve (prepare -> resolve).
            log.warning("could not check or register %s@%s in MLflow (%s); trying the local cache", service.name,
                        alias, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)  # fmt: skip

    def prepare(self, service: TaskService, device: torch.device | None = None) -> LoadedModel:
        """Resolve the task's alias now, load that version and start its engine, beside whatever
        the task serves (nothing is switched; `service.install` does that)."""
        task_settings = self.settings.task(service.name)
        resolved = self.registry.resolve(service.name, task_settings.alias)
        device = device or resolve_device(task_settings.device)
        model = service.task.load_model(resolved.path, device)
        engine = TaskEngine(
            service.name, model, task_settings.engine_config(), self.metrics, device, input_cost=service.task.input_cost
        ).start()
        log.info(
            "task %s loaded version %s from %s on %s",
            service.name,
            resolved.version,
            "local cache" if resolved.from_cache else "MLflow",
            device,
        )
        return LoadedModel(model, resolved, engine, str(device))

    def stop(self) -> None:
        for service in self.services.values():
            if service.loaded is not None:
                service.loaded.engine.stop()
            elif service.engine is not None:
                service.engine.stop()
