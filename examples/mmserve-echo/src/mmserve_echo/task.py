"""The echo task: text in, the same text upper-cased out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.search import DecodeResult
from mmserve.plugins.task import InputLimits, Task, TensorSpec
from mmserve_echo.model import OFFSET, EchoModel

MAX_CHARS = 4096


class EchoTask(Task):
    name = "echo"
    description = "Echo UTF-8 text back upper-cased, one character per decoding step."
    content_types = ("text/plain",)
    v2_inputs = (TensorSpec("TEXT", "BYTES", (1,)),)
    v2_outputs = (TensorSpec("TEXT_OUT", "BYTES", (1,)), TensorSpec("SCORE", "FP32", (1,)))
    default_max_length = 256

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        return EchoModel().to(device).eval()

    def bundled_artifacts(self) -> Path | None:
        return Path(__file__).parent / "artifact"

    def preprocess(self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits) -> Any:
        if content_type and not content_type.startswith("text/"):
            raise UnsupportedMediaType(f"echo accepts text/plain, got {content_type}")
        if not data:
            raise InputError("empty input: send some text")
        if len(data) > MAX_CHARS:
            raise PayloadTooLarge(f"text of {len(data)} bytes is over the echo limit of {MAX_CHARS}")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"input is not valid UTF-8: {exc}") from None
        return torch.tensor(list(data), dtype=torch.long) + OFFSET

    def postprocess(self, result: DecodeResult, model: EncoderDecoder, include_attention: bool) -> dict[str, Any]:
        text = bytes(t - OFFSET for t in result.tokens if t >= OFFSET).decode("utf-8", errors="replace")
        output: dict[str, Any] = {"text": text, "score": result.score, "finished": result.finished}
        if include_attention and result.attention is not None:
            output["attention"] = result.attention.tolist()
        return output

    def token_text(self, token_id: int, model: EncoderDecoder) -> str:
        return chr(token_id - OFFSET) if token_id >= OFFSET else ""

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        return {"TEXT_OUT": output["text"], "SCORE": output["score"]}
