"""The captioning task: what the server needs to serve, train and evaluate the captioner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.captioning.checkpoint import load_captioner
from mmserve.plugins.captioning.model import Captioner
from mmserve.plugins.captioning.preprocess import CONTENT_TYPES, image_bytes_to_tensor
from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.search import DecodeResult
from mmserve.plugins.task import InputLimits, Task, TensorSpec, TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class CaptioningTask(Task):
    name = "captioning"
    description = "Describe an image in English (Show, Attend and Tell: ResNet features + attention LSTM)."
    content_types = CONTENT_TYPES
    v2_inputs = (TensorSpec("IMAGE", "BYTES", (1,)),)
    v2_outputs = (TensorSpec("CAPTION", "BYTES", (1,)), TensorSpec("SCORE", "FP32", (1,)))
    default_max_length = 24

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        return load_captioner(artifact_dir, device)

    def bundled_artifacts(self) -> Path | None:
        return WEIGHTS_DIR

    def preprocess(self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits) -> Any:
        assert isinstance(model, Captioner), f"captioning needs a Captioner, got {type(model).__name__}"
        return image_bytes_to_tensor(data, content_type, model, limits)

    def postprocess(self, result: DecodeResult, model: EncoderDecoder, include_attention: bool) -> dict[str, Any]:
        assert isinstance(model, Captioner), f"captioning needs a Captioner, got {type(model).__name__}"
        words, kept = model.readable_tokens(result.tokens)  # kept: the attention rows of those words
        output: dict[str, Any] = {"caption": " ".join(words), "tokens": words, "score": float(result.score)}
        if include_attention:
            rows = result.attention[kept] if result.attention is not None and kept else None
            output["attention"] = attention_grids(words, rows, model.grid_size)
        return output

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        # One value per request item: the server stacks items into the batch dimension, so a
        # batch of N images gives CAPTION and SCORE tensors of shape [N] (as tritonclient expects).
        return {"CAPTION": output["caption"], "SCORE": float(output["score"])}

    def train(self, options: TrainOptions, logger: RunLogger) -> TrainResult:
        from mmserve.plugins.captioning.train import train_captioner

        return train_captioner(options, logger)

    def evaluate(self, artifact_dir: Path, logger: RunLogger, device: str = "cpu") -> dict[str, float]:
        from mmserve.plugins.captioning.evaluate import evaluate_artifact

        return evaluate_artifact(Path(artifact_dir), logger, device)


def attention_grids(
    words: list[str], attention: torch.Tensor | None, grid_size: tuple[int, int]
) -> list[dict[str, Any]]:
    """One {"token", "grid": h x w nested floats (4 dp)} per word, from attention [T, N]."""
    h, w = grid_size
    if attention is None or not words:
        return []
    assert attention.shape == (len(words), h * w), (
        f"attention {tuple(attention.shape)} does not fit {len(words)} words on a {h}x{w} grid"
    )
    grids = attention.float().reshape(len(words), h, w).tolist()
    return [
        {"token": word, "grid": [[round(v, 4) for v in row] for row in grid]} for word, grid in zip(words, grids)
    ]
