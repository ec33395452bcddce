"""MLflow connection settings and the MLflow implementation of the plugins' RunLogger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.tracking import MlflowClient

EXPERIMENT = "mmserve"


def default_tracking_uri(data_dir: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded sqlite store under the data directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


def redact_uri(uri: str) -> str:
    """A tracking URI fit for messages: any user name or password in it replaced by ***."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def limit_http_retries() -> None:
    # MLflow's defaults retry an unreachable tracking server for minutes; a model server falls
    # back to its local cache instead, so fail fast unless the user chose otherwise.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class MlflowRunLogger:
    """RunLogger that writes to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:6000])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)
