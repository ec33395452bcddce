"""Model artifacts on disk: `config.json` plus `weights.safetensors` (never pickles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"  # the evaluation that belongs to these weights, logged on registration
# Training-time copies of earlier weights (e.g. for averaging) that may sit inside an output
# directory; they are not part of the model, so registering the directory leaves them out.
CHECKPOINTS_DIR = "checkpoints"


def save_model_artifacts(directory: Path, config: dict[str, Any], model: torch.nn.Module, half: bool = False) -> Path:
    """Write config.json and weights.safetensors; `half` stores float weights as fp16 to halve size."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        state[name] = tensor.half() if half and tensor.is_floating_point() else tensor
    save_file(state, str(directory / WEIGHTS_FILE))
    # safetensors creates the file 0600; artifacts are shared (MLflow, other users, images).
    (directory / WEIGHTS_FILE).chmod(0o644)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model artifact {directory} has no {CONFIG_FILE}")
    return json.loads(path.read_text())


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """An artifact's tensors by name, as stored (for loading only part of them, or renamed)."""
    return load_file(str(Path(directory) / WEIGHTS_FILE))


def load_weights(directory: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into `model`, casting to the model's dtypes; strict."""
    state = read_weights(directory)
    reference = model.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ValueError(f"weights in {directory} do not match the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    return model


def write_metrics(directory: Path, metrics: dict[str, float]) -> Path:
    """Store a model's evaluation beside its weights, so every registered version carries it."""
    path = directory / METRICS_FILE
    path.write_text(json.dumps({k: float(v) for k, v in sorted(metrics.items())}, indent=2) + "\n")
    return path


def read_metrics(directory: Path) -> dict[str, float]:
    """The metrics stored with an artifact directory ({} when it has none)."""
    path = directory / METRICS_FILE
    if not path.is_file():
        return {}
    return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}


def with_test_metrics(stored: dict[str, float], evaluated: dict[str, float]) -> dict[str, float]:
    """`stored` metrics with a new test evaluation's as their `test_*` ones. An earlier
    evaluation's test figures go: kept beside the new ones, a figure the current evaluation no
    longer measures would read as current."""
    kept = {k: v for k, v in stored.items() if not k.startswith("test_")}
    return kept | {k if k.startswith("test_") else f"test_{k}": v for k, v in evaluated.items()}


def read_task_config(directory: Path, task: str, format_version: int) -> dict[str, Any]:
    """config.json of an artifact that must be `task`'s, at `format_version`; ValueError otherwise."""
    config = read_config(directory)
    found, version = config.get("task"), config.get("format_version")
    if found != task or version != format_version:
        article = "an" if task[:1].lower() in "aeiou" else "a"
        raise ValueError(f"{directory} is not {article} {task} artifact of format {format_version}: task {found!r}, format {version!r}")
    return config


def artifact_file(directory: Path, name: str) -> Path:
    """A file the artifact must hold (e.g. vocab.json); FileNotFoundError naming it otherwise."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"model artifact {directory} has no {name}")
    return path
