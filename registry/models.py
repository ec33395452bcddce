"""The model registry: MLflow registered models, one per task, plus a local artifact cache.

Registered model name = task name; the server loads `models:/<task>@<alias>`. Every version
it resolves is copied to `<data_dir>/models/<task>/<version>/` and the alias is remembered in
`aliases.json`, so a restart still serves while MLflow is unreachable.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mmserve.plugins.artifacts import CHECKPOINTS_DIR, CONFIG_FILE, read_metrics
from mmserve.registry.tracking import EXPERIMENT, MlflowRunLogger, default_tracking_uri, limit_http_retries

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"


# Task, alias and version names become cache paths (<data_dir>/models/<task>/<version>): one
# plain path component each, never "..", a separator or a leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class UnsafeName(ValueError):
    """A task, alias or version name that cannot be a single, plain path component."""


def safe_name(kind: str, value: str) -> str:
    """`value` if it is a plain name (letters, digits, `._-`, no leading dot, no `..`); else UnsafeName."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise UnsafeName(f"{kind} name {value!r} is not allowed: use letters, digits, '.', '_' and '-' only")
    return value


class ModelNotFound(LookupError):
    """No version of the task's model is available, neither in MLflow nor in the cache."""


@dataclass(frozen=True)
class ResolvedModel:
    task: str
    alias: str
    version: str
    path: Path
    from_cache: bool  # True when MLflow could not be reached and the local copy was used


class ModelRegistry:
    def __init__(self, data_dir: Path, tracking_uri: str | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.data_dir)
        self.cache_dir = self.data_dir / "models"
        limit_http_retries()
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        # Created lazily: connecting (and migrating a new sqlite store) takes seconds.
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:"):
            # A database store keeps no files: put artifacts beside it in the data directory.
            location = (self.data_dir / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)

    @contextmanager
    def start_run(self, task: str, run_name: str | None = None) -> Iterator[MlflowRunLogger]:
        """An MLflow run tagged with the task; FAILED if the block raises."""
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags={"mmserve.task": task})
        logger = MlflowRunLogger(self.client, run.info.run_id)
        try:
            yield logger
        except BaseException:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def register(
        self,
        task: str,
        artifact_dir: Path,
        run_id: str | None = None,
        alias: str | None = None,
        description: str = "",
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Log `artifact_dir` to a run and register it as a new version of model `task`.

        The version carries its evaluation: `metrics`, else the artifact's metrics.json, is
        logged to the run and set as `metric.<name>` tags on the version, so MLflow shows
        e.g. BLEU beside the version an alias points at.
        """
        if not (artifact_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{artifact_dir} is not a model artifact directory (no {CONFIG_FILE})")
        metrics = metrics if metrics is not None else read_metrics(artifact_dir)
        if run_id is None:
            with self.start_run(task, run_name=f"register-{task}") as logger:
                if metrics:
                    logger.log_metrics(metrics)
                return self.register(task, artifact_dir, logger.run_id, alias, description, metrics)
        self._log_model_files(run_id, artifact_dir)
        try:
            self.client.get_registered_model(task)
        except MlflowException:
            self.client.create_registered_model(task, description=f"mmserve task {task}")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        version = self.client.create_model_version(task, source, run_id=run_id, description=description).version
        for name, value in (metrics or {}).items():
            self.client.log_metric(run_id, name, float(value))
            self.client.set_model_version_tag(task, str(version), f"metric.{name}", f"{float(value):.6g}")
        if alias:
            self.set_alias(task, alias, str(version))
        log.info("registered %s version %s%s", task, version, f" as @{alias}" if alias else "")
        return str(version)

    def _log_model_files(self, run_id: str, artifact_dir: Path) -> None:
        """Upload the artifact directory as the run's model, leaving out training checkpoints."""
        if not (artifact_dir / CHECKPOINTS_DIR).is_dir():
            self.client.log_artifacts(run_id, str(artifact_dir), MODEL_ARTIFACT_PATH)
            return
        with tempfile.TemporaryDirectory(prefix="mmserve-register-") as staging:
            model_files = Path(staging) / MODEL_ARTIFACT_PATH
            shutil.copytree(
                artifact_dir,
                model_files,
                ignore=lambda folder, names: [CHECKPOINTS_DIR] if Path(folder) == artifact_dir else [],
            )
            self.client.log_artifacts(run_id, str(model_files), MODEL_ARTIFACT_PATH)

    def set_alias(self, task: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(task, alias, version)

    def has_alias(self, task: str, alias: str) -> bool:
        try:
            self.client.get_model_version_by_alias(task, alias)
            return True
        except MlflowException:
            return False

    def ensure_bundled(self, task: str, bundled_dir: Path | None, alias: str) -> str | None:
        """On first start, register the plugin's demo weights as `task@alias` if nothing is there."""
        if bundled_dir is None or self.has_alias(task, alias):
            return None
        return self.register(task, bundled_dir, alias=alias, description="bundled demo weights")

    def list_models(self) -> list[dict[str, Any]]:
        """Registered models with their versions and aliases."""
        out = []
        for model in self.client.search_registered_models():
            aliases_by_version: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases_by_version.setdefault(str(version), []).append(alias)
            versions = [
                {
                    "version": str(v.version),
                    "aliases": sorted(aliases_by_version.get(str(v.version), [])),
                    "run_id": v.run_id,
                    "description": v.description,
                }
                for v in self.client.search_model_versions(f"name='{model.name}'")
            ]
            out.append({"name": model.name, "versions": sorted(versions, key=lambda v: int(v["version"]))})
        return out

    def cached_models(self) -> list[dict[str, Any]]:
        """Versions in the local cache, with the aliases last seen for them (no MLflow call):
        what a server on this data directory serves while MLflow is unreachable."""
        out = []
        for task_dir in sorted(p for p in self.cache_dir.glob("*") if p.is_dir()):
            if not _SAFE_NAME.fullmatch(task_dir.name):
                continue
            aliases_file = self._aliases_file(task_dir.name)
            aliases = json.loads(aliases_file.read_text()) if aliases_file.is_file() else {}
            versions = [
                {"version": v.name, "aliases": sorted(a for a, to in aliases.items() if to == v.name),
                 "run_id": None, "description": "cached"}
                for v in task_dir.iterdir() if (v / CONFIG_FILE).is_file()
            ]  # fmt: skip
            if versions:
                out.append({"name": task_dir.name, "versions": sorted(versions, key=lambda v: _version_key(v["version"]))})
        return out

    def current_version(self, task: str, alias: str) -> str:
        """The version `task@alias` points at in MLflow now (raises when MLflow cannot say)."""
        return str(self.client.get_model_version_by_alias(task, alias).version)

    def resolve(self, task: str, alias: str) -> ResolvedModel:
        """Local path of `models:/<task>@<alias>`, downloading it once; falls back to the cache."""
        safe_name("task", task)
        safe_name("alias", alias)
        try:
            version = str(self.client.get_model_version_by_alias(task, alias).version)
        except Exception as exc:  # unreachable server or missing alias: try the local cache
            cached = self._cached_alias(task, alias)
            if cached is None:
                raise ModelNotFound(f"no model for {task}@{alias}: {exc}") from exc
            log.warning("MLflow unavailable for %s@%s (%s); serving cached version %s", task, alias, exc, cached)
            return ResolvedModel(task, alias, cached, self.cache_dir / task / cached, from_cache=True)
        path = self.cache_dir / task / safe_name("version", version)
        if not (path / CONFIG_FILE).is_file():
            self._download(self.client.get_model_version_download_uri(task, version), path)
        self._remember_alias(task, alias, version)
        return ResolvedModel(task, alias, version, path, from_cache=False)

    def _download(self, uri: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = Path(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=self.tracking_uri))
            if not (local / CONFIG_FILE).is_file():
                nested = local / MODEL_ARTIFACT_PATH
                local = nested if (nested / CONFIG_FILE).is_file() else local
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(local), target)  # atomic enough: readers check for config.json

    def _aliases_file(self, task: str) -> Path:
        return self.cache_dir / task / "aliases.json"

    def _remember_alias(self, task: str, alias: str, version: str) -> None:
        path = self._aliases_file(task)
        aliases = json.loads(path.read_text()) if path.is_file() else {}
        aliases[alias] = version
        path.write_text(json.dumps(aliases, indent=2))

    def _cached_alias(self, task: str, alias: str) -> str | None:
        path = self._aliases_file(task)
        if not path.is_file():
            return None
        version = json.loads(path.read_text()).get(alias)
        if not isinstance(version, str) or not _SAFE_NAME.fullmatch(version) or ".." in version:
            return None  # a tampered aliases.json must not point outside the cache
        if version and (self.cache_dir / task / version / CONFIG_FILE).is_file():
            return version
        return None


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
