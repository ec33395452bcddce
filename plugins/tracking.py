"""What training code may log. The registry implements it with MLflow; plugins never import
MLflow, so training runs (and tests) work with any logger, including `NullRunLogger`."""

from __future__ import annotations

from typing import Any, Protocol


class RunLogger(Protocol):
    def log_params(self, params: dict[str, Any]) -> None:
        """Record hyper-parameters once per run."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metric values, e.g. once per epoch with `step` = epoch."""

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure (attention maps, curves) as an image artifact."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store text (sample outputs) as an artifact."""


class NullRunLogger:
    """Discards everything; for tests and for training without tracking."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass


class MemoryRunLogger(NullRunLogger):
    """Keeps metrics and params in memory; handy in tests."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[str] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

