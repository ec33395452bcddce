"""The action task: name each action in a video clip, in order, with its time span."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from mmserve.plugins.action.checkpoint import load_recognizer
from mmserve.plugins.action.model import ActionRecognizer
from mmserve.plugins.action.preprocess import (
    CONTENT_TYPES,
    FRAMES_CONTENT_TYPE,
    decode_clip,
    decode_frames,
    frames_to_bytes,
)
from mmserve.plugins.action.spans import attention_span, find_actions
from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.search import DecodeResult
from mmserve.plugins.task import InputLimits, Prepared, Task, TensorSpec, TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The single-label (mode="label") demo model: serve it by registering this directory for the task.
LABEL_WEIGHTS_DIR = Path(__file__).resolve().parent / "label"


class SamplingOptions(BaseModel):
    """How frames are sampled from an uploaded video (one of the two; default: the model's pace)."""

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(None, gt=0, le=120, description="Sample this many frames per second")
    frames: int | None = Field(None, ge=1, le=4096, description="Sample this many frames spread over the clip")


class ActionTask(Task):
    name = "action"
    description = "Name the actions in a video clip, in order, with their time spans (frame CNN + BiGRU + attention LSTM)."
    content_types = CONTENT_TYPES
    # VIDEO: the file's bytes; FRAMES: decoded frames uint8 [T, H, W, 3] per clip ([N, T, H, W, 3])
    v2_inputs = (TensorSpec("VIDEO", "BYTES", (1,)), TensorSpec("FRAMES", "UINT8", (-1, -1, -1, 3)))
    v2_outputs = (TensorSpec("CAPTION", "BYTES", (1,)), TensorSpec("ACTIONS", "BYTES", (1,)))
    default_max_length = 16
    request_options = SamplingOptions
    keeps_attention = True  # every action's time span comes from the attention over frames

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        return load_recognizer(artifact_dir, device)

    def bundled_artifacts(self) -> Path | None:
        return WEIGHTS_DIR

    def preprocess(
        self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits,
        options: SamplingOptions | None = None,
    ) -> Any:
        assert isinstance(model, ActionRecognizer), f"action needs an ActionRecognizer, got {type(model).__name__}"
        params = options.model_dump(exclude_none=True) if options is not None else None
        if content_type == FRAMES_CONTENT_TYPE:
            clip, times = decode_frames(data, model, limits, params)
            return Prepared(clip, times)
        clip, info = decode_clip(data, content_type, model, limits, params)
        return Prepared(clip, info.sampled_times_s)  # the frame times turn attention spans into seconds

    def input_cost(self, inputs: Any) -> int:
        """Frames of the clip: what the encoder's cost grows with."""
        return int(inputs.shape[0])

    def postprocess(
        self, result: DecodeResult, model: EncoderDecoder, include_attention: bool,
        options: SamplingOptions | None = None, context: list[float] | None = None,
    ) -> dict[str, Any]:
        assert isinstance(model, ActionRecognizer), f"action needs an ActionRecognizer, got {type(model).__name__}"
        return describe(result, model, include_attention, frame_times=context)

    def v2_input(self, name: str, value: np.ndarray, parameters: dict[str, Any] | None = None) -> tuple[bytes, str | None]:
        """FRAMES: one clip's uint8 [T, H, W, 3] -> the raw-frames bytes preprocess takes."""
        if name != "FRAMES":
            return super().v2_input(name, value, parameters)
        return frames_to_bytes(value), FRAMES_CONTENT_TYPE

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        import json

        return {"CAPTION": output["caption"], "ACTIONS": json.dumps(output["actions"])}

    def train(self, options: TrainOptions, logger: RunLogger) -> TrainResult:
        from mmserve.plugins.action.train import train_recognizer

        return train_recognizer(options, logger)

    def evaluate(self, artifact_dir: Path, logger: RunLogger, device: str = "cpu") -> dict[str, float]:
        from mmserve.plugins.action.evaluate import evaluate_artifact

        return evaluate_artifact(Path(artifact_dir), logger, device)


def describe(
    result: DecodeResult, model: ActionRecognizer, include_attention: bool, frame_times: list[float] | None = None
) -> dict[str, Any]:
    """The JSON of one decoded clip: caption, actions with spans in seconds, tokens, score.

    `frame_times` are the sampled frames' times (the request's `Prepared` context); without
    them frame k is at k / default_fps, which is exact for the default sampling.
    """
    skip = (model.vocab.pad_id, model.vocab.bos_id)
    kept = [i for i, t in enumerate(result.tokens) if t not in skip]
    words = [model.vocab.itos[result.tokens[i]] for i in kept]
    rows = result.attention[kept] if result.attention is not None and kept else None
    frames = rows.shape[-1] // (1 if model.pooled else model.regions) if rows is not None else 0
    attention = model.frame_attention(rows, frames) if rows is not None and not model.pooled else rows
    period = 1.0 / model.config.encoder.default_fps
    times = frame_times or [k * period for k in range(max(frames, 1))]
    end_of = lambda f: times[f + 1] if f + 1 < len(times) else times[f] + period  # noqa: E731
    # Per-token probabilities are not in DecodeResult yet; each action carries the sequence's
    # mean per-token probability until they are.
    mean_prob = float(torch.tensor(result.score / max(len(result.tokens) + 1, 1)).exp())
    label_mode = model.config.mode == "label"
    if label_mode:  # one class token ("moves_left"): the clip's action, no subject
        words = words[:1]
        located = attention is not None and not model.pooled and bool(words)
        found = [(None, w.replace("_", " "), attention_span(attention[0]) if located else (0, -1)) for w in words]
    else:
        found = [(f.subject, f.action, f.span) for f in find_actions(words, attention if not model.pooled else None)]
    actions = []
    for subject, action, span in found:
        start, end = span if span[1] >= span[0] else (0, max(frames - 1, 0))
        actions.append({"action": action, "subject": subject, "start_s": round(times[start], 3),
                        "end_s": round(end_of(end), 3), "score": round(mean_prob, 4)})  # fmt: skip
    caption = actions[0]["action"] if label_mode and actions else " ".join(words)
    output: dict[str, Any] = {"caption": caption, "actions": actions, "tokens": words, "score": float(result.score)}
    if include_attention:
        output["attention"] = [
            {"token": w, "frames": [round(float(v), 4) for v in row]} for w, row in zip(words, attention if attention is not None else [])
        ]
    return output
