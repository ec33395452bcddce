"""Server settings: defaults < YAML file (MMSERVE_CONFIG or --config) < MMSERVE_* env vars.

Per-task settings live under `tasks.<name>` in YAML, or `MMSERVE_TASKS__<NAME>__<FIELD>` in
the environment, e.g. MMSERVE_TASKS__CAPTIONING__MAX_BATCH_SIZE=32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

if TYPE_CHECKING:  # settings stay importable without torch (the CLI, serve-config, the chart)
    from mmserve.plugins.task import InputLimits
    from mmserve.server.engine import EngineConfig


class AutoscalingSettings(BaseModel):
    """Ray Serve autoscaling of one task's replicas on ongoing requests per replica."""

    model_config = {"extra": "forbid"}

    min_replicas: int = Field(1, ge=0, le=1024, description="Fewest replicas (0 scales to zero when idle)")
    max_replicas: int = Field(4, ge=1, le=1024, description="Most replicas")
    target_ongoing_requests: float = Field(
        16.0, gt=0, le=100_000, description="Requests per replica Serve scales towards; batching wants several"
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class TaskSettings(BaseModel):
    """Settings of one task's engine and model."""

    model_config = {"extra": "forbid"}

    alias: str = Field("production", description="MLflow model alias to serve: models:/<task>@<alias>")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Inputs per encoder batch")
    max_batch_cost: int = Field(
        0, ge=0, description="Summed input cost (e.g. audio/video frames) per encoder batch; 0 = no limit"
    )
    length_buckets: bool = Field(
        True, description="Decode inputs of very different lengths in separate batches (bounds padding)"
    )
    max_frames: int | None = Field(None, ge=1, description="This task's video frame limit (server-wide if unset)")
    max_duration_s: float | None = Field(None, gt=0, description="This task's media length limit, seconds")
    max_segment_s: float | None = Field(
        None, gt=0, le=3600,
        description="Longer media is cut into segments of at most this many seconds, decoded side by side and "
        "joined (tasks that segment, e.g. speech); unset: the task's own length",
    )
    max_output_length: int | None = Field(
        None, ge=1, le=1_000_000,
        description="This task's upper bound for a request's output length (tokens / steps); unset: the task's "
        "own limit, else the server-wide max_output_length",
    )
    default_beam_size: int | None = Field(
        None, ge=1, le=64,
        description="Beam width for a request that names none (capped by max_beam_size); unset: the task's own "
        "default",
    )
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="Wait from the first arrival for a fuller batch")
    max_active: int = Field(64, ge=1, le=4096, description="Sequences decoding at once")
    max_queue: int = Field(256, ge=1, le=100_000, description="Requests waiting for a decode slot; then 503")

    # Ray Serve only (`backend: ray` and `mmserve serve-config`); the embedded server ignores them.
    num_replicas: int | None = Field(
        None, ge=1, le=1024, description="Fixed replica count (1 if unset); exclusive with autoscaling"
    )
    autoscaling: AutoscalingSettings | None = Field(None, description="Scale replicas with load instead")
    num_cpus: float = Field(0.5, ge=0, le=1024, description="Logical CPUs Ray reserves per replica")
    num_gpus: float = Field(0, ge=0, le=64, description="GPUs per replica; a fraction (0.5) shares one GPU")
    max_ongoing_requests: int = Field(
        64, ge=1, le=100_000, description="Requests one replica works on at once (keep >= max_active to batch)"
    )
    max_queued_requests: int = Field(
        256, ge=-1, le=1_000_000, description="Requests waiting for a replica per caller; then 503. -1: no limit"
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _no_zero_queue(cls, value: int) -> int:
        # Ray Serve refuses 0 (it would shed every request); -1 is its "no limit".
        if value == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or at least 1, not 0")
        return value

    @field_validator("num_gpus")
    @classmethod
    def _whole_gpus_above_one(cls, value: float) -> float:
        # Ray packs fractions onto one device; above one GPU it only hands out whole devices.
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"num_gpus above 1 must be a whole number, got {value}")
        return value

    @model_validator(mode="after")
    def _one_way_to_size(self) -> TaskSettings:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        if self.autoscaling is not None and self.autoscaling.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(
                f"autoscaling.target_ongoing_requests ({self.autoscaling.target_ongoing_requests:g}) is above "
                f"max_ongoing_requests ({self.max_ongoing_requests}): replicas could never reach the target"
            )
        return self

    def engine_config(self) -> EngineConfig:
        from mmserve.server.engine import EngineConfig

        return EngineConfig(
            max_batch_size=self.max_batch_size,
            max_batch_cost=self.max_batch_cost,
            max_wait_ms=self.max_wait_ms,
            max_active=self.max_active,
            max_queue=self.max_queue,
            length_buckets=self.length_buckets,
        )


class RaySettings(BaseModel):
    """The Ray cluster and the ingress deployment (`backend: ray`)."""

    model_config = {"extra": "forbid"}

    address: str | None = Field(
        None, description="Cluster to join, e.g. 10.0.0.5:6379; unset: RAY_ADDRESS, else start a local one"
    )
    app_name: str = Field("mmserve", min_length=1, description="Ray Serve application name")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a locally started cluster (all if unset)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a locally started cluster (detected if unset)")
    ingress_replicas: int = Field(1, ge=1, le=1024, description="Replicas of the HTTP ingress (no model)")
    ingress_num_cpus: float = Field(0.25, ge=0, le=1024, description="Logical CPUs per ingress replica")
    ingress_max_ongoing_requests: int = Field(
        1000, ge=1, le=1_000_000, description="Requests one ingress replica relays at once"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMSERVE_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: Literal["embedded", "ray"] = "embedded"
    data_dir: Path = Field(Path.home() / ".mmserve", description="Embedded MLflow store and the model cache")
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Entry-point plugin names to load; empty loads all"
    )
    plugin_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Dotted module paths loaded as plugins (no packaging needed)"
    )
    register_bundled: bool = Field(True, description="Register bundled demo weights when a task has no model yet")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest accepted upload (413 above)")
    max_pixels: int = Field(16_000_000, ge=1, description="Largest accepted image, width x height (413 above)")
    max_frames: int = Field(512, ge=1, description="Most video frames accepted")
    max_duration_s: float = Field(60.0, gt=0, description="Longest audio/video accepted, seconds")
    max_json_bytes: int | None = Field(
        None, ge=2, description="Largest JSON request body, bytes (413 above); unset: the request body limit"
    )
    max_json_depth: int = Field(
        64, ge=2, le=500, description="Most nested JSON arrays/objects in a request (400 above)"
    )
    max_output_length: int = Field(128, ge=1, le=4096, description="Upper bound for a request's max_length")
    max_beam_size: int = Field(8, ge=1, le=64, description="Upper bound for a request's beam_size")
    request_timeout_s: float = Field(60.0, gt=0, description="A request still unanswered after this gets 504")
    model_poll_interval_s: float = Field(
        30.0, ge=0, description="How often to check MLflow for moved aliases and switch versions; 0 = never"
    )
    preprocess_threads: int = Field(4, ge=1, le=256, description="Worker threads decoding uploads")
    torch_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="torch intra-op CPU threads per process (0 = torch's default, one per core). "
        "1 keeps the engine and preprocessing threads from oversubscribing the cores",
    )
    # API keys: off when none is configured. repr=False so settings never print a key.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="API keys (MMSERVE_API_KEYS=k1,k2); empty: no auth"
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line (# comments)")
    auth_exempt_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/v2/health", "/metrics", "/docs", "/openapi.json"],
        description="Paths (and everything under them) open without a key when keys are on",
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins browsers may call from (CORS), e.g. https://app.example; empty: off"
    )
    tasks: dict[str, TaskSettings] = Field(default_factory=dict, description="Per-task settings by task name")
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray cluster and ingress (backend: ray)")

    @field_validator("plugins", "plugin_modules", "api_keys", "auth_exempt_paths", "cors_allow_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("MMSERVE_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"MMSERVE_CONFIG={config_file} does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def task(self, name: str) -> TaskSettings:
        # Env var names are upper-cased by the shell convention; accept either case.
        return self.tasks.get(name) or self.tasks.get(name.upper()) or self.tasks.get(name.lower()) or TaskSettings()

    def input_limits(self) -> InputLimits:
        from mmserve.plugins.task import InputLimits

        return InputLimits(self.max_upload_bytes, self.max_pixels, self.max_frames, self.max_duration_s)

    def task_input_limits(self, name: str) -> InputLimits:
        """The input limits of one task: the server-wide ones, with that task's overrides."""
        from dataclasses import replace

        task = self.task(name)
        limits = self.input_limits()
        if task.max_frames is not None:
            limits = replace(limits, max_frames=task.max_frames)
        if task.max_duration_s is not None:
            limits = replace(limits, max_duration_s=task.max_duration_s)
        if task.max_output_length is not None:
            limits = replace(limits, max_output_length=task.max_output_length)
        if task.max_segment_s is not None:
            limits = replace(limits, max_segment_s=task.max_segment_s)
        return limits

    def output_limit(self, name: str, task_default: int | None = None) -> int:
        """The most output a request to task `name` may ask for: its setting, else the task's
        own limit (`Task.max_output_length`), else the server-wide `max_output_length`."""
        configured = self.task(name).max_output_length
        return configured or task_default or self.max_output_length

    def default_beam_size(self, name: str, task_default: int = 1) -> int:
        """The beam width of a request to task `name` that names none: its setting, else the
        task's own (`Task.default_beam_size`), at most `max_beam_size`."""
        return min(self.task(name).default_beam_size or task_default, self.max_beam_size)


class _ResolvedSettings(Settings):
    """Settings resolved elsewhere and passed along whole: neither environment nor YAML is read."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def resolved_settings(values: dict[str, Any]) -> Settings:
    """Settings exactly as `values` says (defaults for the rest), ignoring MMSERVE_* and YAML.

    A Ray replica receives the settings its driver resolved; re-reading its own environment
    could disagree with the driver, or fail on an MMSERVE_CONFIG path that only exists there.
    """
    return _ResolvedSettings(**values)
