"""Everything a server process serves: discovered tasks, their models and engines.

Built once per process from settings. A task whose model cannot be loaded is kept, marked
failed with the reason, so readiness endpoints tell the truth while the other tasks serve.
"""

from __future__ import annotations

import logging
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


@dataclass
class TaskService:
    """One task as served: its plugin, model version, engine and health."""

    task: Task
    plugin: str
    status: Literal["loading", "ready", "failed"] = "loading"
    error: str | None = None
    model: EncoderDecoder | None = None
    resolved: ResolvedModel | None = None
    engine: TaskEngine | None = None
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def version(self) -> str | None:
        return self.resolved.version if self.resolved else None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


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
        task_settings = self.settings.task(service.name)
        try:
            if self.settings.register_bundled:
                self.registry.ensure_bundled(service.name, service.task.bundled_artifacts(), task_settings.alias)
            service.resolved = self.registry.resolve(service.name, task_settings.alias)
            device = device or resolve_device(task_settings.device)
            service.model = service.task.load_model(service.resolved.path, device)
            service.device = str(device)
            service.engine = TaskEngine(
                service.name,
                service.model,
                task_settings.engine_config(),
                self.metrics,
                device,
                input_cost=service.task.input_cost,
            ).start()
            service.status, service.error = "ready", None
            log.info(
                "task %s serving version %s from %s on %s",
                service.name,
                service.version,
                "local cache" if service.resolved.from_cache else "MLflow",
                device,
            )
        except Exception as exc:
            service.status, service.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("task %s failed to load its model", service.name)

    def stop(self) -> None:
        for service in self.services.values():
            if service.engine is not None:
                service.engine.stop()
