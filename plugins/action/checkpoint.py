"""The action model's artifact directory: config.json, weights.safetensors (never pickles), vocab.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.action.model import ActionConfig, ActionRecognizer
from mmserve.plugins.artifacts import WEIGHTS_FILE, artifact_file, load_weights, read_task_config, save_model_artifacts
from mmserve.plugins.nn.vocab import Vocabulary

TASK = "action"
VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1


def save_recognizer(model: ActionRecognizer, directory: Path, training: dict[str, Any], half: bool = False) -> Path:
    """Write config.json (encoder, decoder, mode, training recipe), weights.safetensors and vocab.json."""
    directory = Path(directory)
    config = {"task": TASK, "format_version": FORMAT_VERSION, **model.config.to_dict(), "training": training}
    save_model_artifacts(directory, config, model, half=half)
    model.vocab.save(directory / VOCAB_FILE)
    return directory


def load_recognizer(artifact_dir: Path, device: torch.device | str = "cpu") -> ActionRecognizer:
    """Build an ActionRecognizer from an artifact directory, in eval mode on `device`."""
    artifact_dir = Path(artifact_dir)
    config = read_task_config(artifact_dir, TASK, FORMAT_VERSION)
    vocab_path = artifact_file(artifact_dir, VOCAB_FILE)
    model_config = ActionConfig.from_dict(config)
    if "presence_head" not in config:  # artifacts written before the flag existed: read it off the weights
        from safetensors import safe_open

        with safe_open(str(artifact_dir / WEIGHTS_FILE), "pt") as weights:
            model_config.presence_head = "presence.weight" in set(weights.keys())
    model = ActionRecognizer(model_config, Vocabulary.load(vocab_path))
    load_weights(artifact_dir, model)
    return model.to(torch.device(device)).eval()
