"""The forecast task: an observed 1-D series in, its next `max_length` values out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.decoding import DecodeResult
from mmserve.plugins.task import InputLimits, Task
from mmserve_forecast.artifact_io import load_artifact
from mmserve_forecast.preprocess import JSON_TYPES, TEXT_TYPES, parse_series


class ForecastTask(Task):
    name = "forecast"
    description = (
        "Forecast the next values of a 1-D series (a JSON array of numbers or CSV text, 16 to 2048 values). "
        "max_length = horizon; temperature 0 gives the mean path, temperature > 0 a sampled path."
    )
    content_types = JSON_TYPES + TEXT_TYPES
    default_max_length = 24

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        return load_artifact(artifact_dir, device)

    def bundled_artifacts(self) -> Path | None:
        return Path(__file__).parent / "artifact"

    def preprocess(self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits) -> Any:
        return parse_series(data, content_type)

    def input_cost(self, inputs: Any) -> int:
        return len(inputs)  # history length: the encoder's work

    def postprocess(self, result: DecodeResult, model: EncoderDecoder, include_attention: bool) -> dict[str, Any]:
        output: dict[str, Any] = {
            "forecast": [float(item[0]) for item in result.tokens],  # one [value] item per step
            "score": result.score,  # log-likelihood of the path, in the series' units
            "horizon": len(result.tokens),
        }
        if include_attention and result.attention is not None:
            output["attention"] = result.attention.tolist()
        return output

    def token_text(self, item: Any, model: EncoderDecoder) -> Any:
        return float(item[0])  # a streamed step is one forecast value
