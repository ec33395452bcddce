"""The captioner's artifact directory: config.json, weights.safetensors (never pickles), vocab.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.artifacts import artifact_file, load_weights, read_task_config, save_model_artifacts
from mmserve.plugins.captioning.model import Captioner, CaptionerConfig
from mmserve.plugins.nn.vocab import Vocabulary

VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1


def save_captioner(model: Captioner, directory: Path, training: dict[str, Any], half: bool = False) -> Path:
    """Write config.json (encoder + decoder config incl. image size, and the training recipe),
    weights.safetensors (fp16 when `half`) and vocab.json."""
    directory = Path(directory)
    config = {"task": "captioning", "format_version": FORMAT_VERSION, **model.config.to_dict(), "training": training}
    config["encoder"]["pretrained"] = False  # the artifact holds every weight; loading never fetches any
    save_model_artifacts(directory, config, model, half=half)
    model.vocab.save(directory / VOCAB_FILE)
    return directory


def load_captioner(artifact_dir: Path, device: torch.device | str = "cpu") -> Captioner:
    """Build a Captioner from an artifact directory, in eval mode on `device`."""
    artifact_dir = Path(artifact_dir)
    config = read_task_config(artifact_dir, "captioning", FORMAT_VERSION)
    vocab_path = artifact_file(artifact_dir, VOCAB_FILE)
    model_config = CaptionerConfig.from_dict(config)
    model_config.encoder.pretrained = False  # every weight comes from the artifact
    model = Captioner(model_config, Vocabulary.load(vocab_path))
    load_weights(artifact_dir, model)
    return model.to(torch.device(device)).eval()
