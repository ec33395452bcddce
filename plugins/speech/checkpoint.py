"""The speech model's artifact directory: config.json and weights.safetensors (never pickles),
and optionally a character n-gram LM for shallow fusion (lm.json + lm.safetensors).

The character vocabulary is fixed (text.py), so it is rebuilt rather than stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.artifacts import load_weights, read_config, save_model_artifacts
from mmserve.plugins.nn.ngram import NGramLM
from mmserve.plugins.speech.model import ListenAttendSpell, SpeechConfig
from mmserve.plugins.speech.text import CHARACTERS, char_vocabulary

FORMAT_VERSION = 1


def save_speech_model(model: ListenAttendSpell, directory: Path, training: dict[str, Any], half: bool = False) -> Path:
    """Write config.json (features, listener, decoder, characters, training recipe) and weights."""
    config = {"task": "speech", "format_version": FORMAT_VERSION, **model.config.to_dict(),
              "characters": CHARACTERS, "training": training}  # fmt: skip
    return save_model_artifacts(Path(directory), config, model, half=half)


def load_speech_model(artifact_dir: Path, device: torch.device | str = "cpu") -> ListenAttendSpell:
    """Build a ListenAttendSpell from an artifact directory, in eval mode on `device`."""
    artifact_dir = Path(artifact_dir)
    config = read_config(artifact_dir)
    task, version = config.get("task"), config.get("format_version")
    if task != "speech" or version != FORMAT_VERSION:
        raise ValueError(f"{artifact_dir} is not a speech artifact of format {FORMAT_VERSION}: task {task!r}, format {version!r}")
    if config.get("characters") != CHARACTERS:
        raise ValueError(f"{artifact_dir} was trained on other characters: {config.get('characters')}")
    model = ListenAttendSpell(SpeechConfig.from_dict(config), char_vocabulary())
    load_weights(artifact_dir, model)
    model = model.to(torch.device(device)).eval()
    if NGramLM.exists(artifact_dir):
        model.attach_lm(NGramLM.load(artifact_dir).to(device))
    return model
