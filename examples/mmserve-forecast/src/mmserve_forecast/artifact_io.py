"""The artifact directory: config.json + model.safetensors (+ metrics.json). Never pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmserve_forecast.model import ForecastConfig, ForecastModel

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"


def save_artifact(model: ForecastModel, out: Path, metrics: dict[str, float] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {"task": "forecast", "model": model.config.to_dict(), "head": model.head.config()}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    if metrics is not None:
        (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")


def load_artifact(directory: Path, device: torch.device | str = "cpu") -> ForecastModel:
    config = json.loads((directory / CONFIG).read_text())
    assert config.get("task") == "forecast", f"{directory / CONFIG} is not a forecast model config"
    model = ForecastModel(ForecastConfig(**config["model"]))
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.to(device).eval()
