"""The music model's artifact directory: config.json, weights.safetensors (never pickles) and
metrics.json (the model's evaluation figures, written by training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.artifacts import load_weights, read_config, save_model_artifacts
from mmserve.plugins.music.model import MusicConfig, MusicModel

METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


def save_music_model(model: MusicModel, directory: Path, training: dict[str, Any], half: bool = False) -> Path:
    """Write config.json (model config + training recipe) and weights.safetensors (fp16 when `half`)."""
    directory = Path(directory)
    config = {"task": "music", "format_version": FORMAT_VERSION, **model.config.to_dict(), "training": training}
    return save_model_artifacts(directory, config, model, half=half)


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    (Path(directory) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))


def read_metrics(directory: Path) -> dict[str, Any]:
    path = Path(directory) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_music_model(artifact_dir: Path, device: torch.device | str = "cpu") -> MusicModel:
    """Build a MusicModel from an artifact directory, in eval mode on `device`."""
    artifact_dir = Path(artifact_dir)
    config = read_config(artifact_dir)
    task, version = config.get("task"), config.get("format_version")
    if task != "music" or version != FORMAT_VERSION:
        raise ValueError(f"{artifact_dir} is not a music artifact of format {FORMAT_VERSION}: task {task!r}, format {version!r}")
    model = MusicModel(MusicConfig.from_dict(config))
    load_weights(artifact_dir, model)
    # What the weights were trained for decides the served modes and the input resolution.
    model.trained_for = config.get("training", {}).get("data", "quarter")
    return model.to(torch.device(device)).eval()
