"""Server settings: defaults < YAML file (MMSERVE_CONFIG or --config) < MMSERVE_* env vars.

Per-task settings live under `tasks.<name>` in YAML, or `MMSERVE_TASKS__<NAME>__<FIELD>` in
the environment, e.g. MMSERVE_TASKS__CAPTIONING__MAX_BATCH_SIZE=32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from plugins.task import InputLimits
from server.engine import EngineConfig


class TaskSettings(BaseModel):
    """Settings of one task's engine and model."""

    model_config = {"extra": "forbid"}

    alias: str = Field("production", description="MLflow model alias to serve: models:/<task>@<alias>")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Inputs per encoder batch")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="Wait from the first arrival for a fuller batch")
    max_active: int = Field(64, ge=1, le=4096, description="Sequences decoding at once")
    max_queue: int = Field(256, ge=0, le=100_000, description="Requests waiting beyond those decoding; then 503")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(self.max_batch_size, self.max_wait_ms, self.max_active, self.max_queue)


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
    max_output_length: int = Field(128, ge=1, le=4096, description="Upper bound for a request's max_length")
    max_beam_size: int = Field(8, ge=1, le=64, description="Upper bound for a request's beam_size")
    request_timeout_s: float = Field(60.0, gt=0, description="A request still unanswered after this gets 504")
    preprocess_threads: int = Field(4, ge=1, le=256, description="Worker threads decoding uploads")
    tasks: dict[str, TaskSettings] = Field(default_factory=dict, description="Per-task settings by task name")

    @field_validator("plugins", "plugin_modules", mode="before")
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
        return InputLimits(self.max_upload_bytes, self.max_pixels, self.max_frames, self.max_duration_s)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment and an optional YAML file; `overrides` win over both."""
    if config_file is not None:
        os.environ["MMSERVE_CONFIG"] = str(config_file)
    return Settings(**overrides)
