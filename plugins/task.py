"""The task contract: what a plugin hands the server for each task it serves.

A task turns request bytes into a tensor (`preprocess`), owns a model that follows the
encode / init_state / step contract (`load_model`), and turns a decoded sequence into JSON
(`postprocess`). The server does everything in between — batching, decoding, streaming,
HTTP, metrics — the same way for every task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from mmserve.plugins.errors import InputError
from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.decoding import DecodeResult
from mmserve.plugins.tracking import RunLogger


@dataclass(frozen=True)
class InputLimits:
    """Limits on one request's input; the server fills them from settings."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_frames: int = 512
    max_duration_s: float = 60.0
    max_output_length: int | None = None  # this task's configured output limit (tasks.<name>.max_output_length)
    max_segment_s: float | None = None  # cut longer media into segments of this length (tasks.<name>.max_segment_s)


@dataclass(frozen=True)
class TensorSpec:
    """An Open Inference Protocol (v2) tensor: name, datatype (BYTES, FP32, ...), shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class Prepared:
    """What `preprocess` returns when `postprocess` needs more than the decoded sequence:
    `inputs` go to the model (collate / encode, `input_cost`); `context` (e.g. the times of the
    sampled video frames) comes back to that request's `postprocess` as `context=`."""

    inputs: Any
    context: Any


@dataclass
class Segments:
    """What `preprocess` returns for an input too long for the model in one piece (e.g. a
    minute of speech): each of `parts` (what preprocess returns for a short input) is decoded
    as a sequence of its own, side by side with the others, and `Task.join_segments` makes one
    answer of their answers, in order. `starts`: where each part begins in the input (seconds,
    for audio); `length`: the whole input's, when the parts may leave some of it out (e.g.
    silence), else None."""

    parts: list[Any]
    starts: list[float]
    length: float | None = None

    def __post_init__(self) -> None:
        assert self.parts and len(self.parts) == len(self.starts), "one start per part, at least one part"


@dataclass
class TrainOptions:
    """Options common to every task's training; `extra` holds task-specific ones."""

    output_dir: Path
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    max_steps: int | None = None  # stop early (smoke tests)
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    artifact_dir: Path
    metrics: dict[str, float]
    params: dict[str, Any]


class Task(ABC):
    """One servable task. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    description: str = ""
    # MIME types accepted for uploads, e.g. ("image/png", "image/jpeg").
    content_types: tuple[str, ...] = ()
    # MIME types `binary_response` can answer with (documented in OpenAPI), e.g. ("audio/midi",).
    binary_media_types: tuple[str, ...] = ()
    # Open Inference Protocol metadata for /v2/models/<name>.
    v2_inputs: tuple[TensorSpec, ...] = ()
    v2_outputs: tuple[TensorSpec, ...] = ()
    default_max_length: int = 32
    # Beam width for a request that names none and neither samples nor streams (those decode
    # greedily); `tasks.<name>.default_beam_size` overrides it. Needs a head that supports beams.
    default_beam_size: int = 1
    # GNMT length penalty (alpha) of beam search for a request that names none.
    default_length_penalty: float = 0.0
    # The task's own upper bound for a request's output length (tokens / steps), when it needs
    # more than the server-wide `max_output_length`; `tasks.<name>.max_output_length` overrides it.
    max_output_length: int | None = None
    # The task's own request parameters (e.g. frames per second), a pydantic model; when set,
    # preprocess and postprocess receive a validated instance as `options=`.
    request_options: type[BaseModel] | None = None
    # True when postprocess reads the attention weights (e.g. word times from the alignment):
    # the engine then keeps them for every request, not only for `attention=true`.
    keeps_attention: bool = False

    @abstractmethod
    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        """Build the model from an artifact directory (config JSON + safetensors), in eval mode."""

    def bundled_artifacts(self) -> Path | None:
        """Directory of the small demo model shipped with the plugin, if any."""
        return None

    @abstractmethod
    def preprocess(self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits) -> Any:
        """Validate and decode one request's bytes into the model's input; raise InputError."""

    @abstractmethod
    def postprocess(self, result: DecodeResult, model: EncoderDecoder, include_attention: bool) -> dict[str, Any]:
        """JSON fields for one decoded sequence (e.g. caption, tokens, score)."""

    def output_length(self, options: BaseModel | None, limit: int) -> int | None:
        """The decode length (max_length) a request's own options ask for, e.g. music's `length`
        in time steps turned into tokens; None: the task default. `limit` is the task's output
        limit: raise UnprocessableInput (422) naming it, in the task's own unit, when the options
        ask for more."""
        return None

    def input_cost(self, inputs: Any) -> int:
        """What one preprocessed input costs the encoder batch (e.g. its audio or video frames).
        An encoder batch closes at `max_batch_cost`, so one long input does not pad many short ones."""
        return 1

    def join_segments(self, outputs: list[dict[str, Any]], segments: Segments) -> dict[str, Any]:
        """One answer from the answers (postprocess's JSON) of the parts of a `Segments` input,
        in order. Only tasks whose preprocess returns Segments need it."""
        raise NotImplementedError(f"task {self.name!r} returned Segments but does not join them")

    # Streamed between the tokens of consecutive parts of a Segments input (e.g. " " for text).
    segment_separator: Any = None

    def token_text(self, item: Any, model: EncoderDecoder) -> Any:
        """JSON of one decoded step, for streaming partial output: a token's text for
        categorical models with a vocabulary, the head's item (frame, vector) otherwise."""
        vocab = getattr(model, "vocab", None)
        if vocab is not None and isinstance(item, int):
            return vocab.itos[item]
        return item

    def stream_items(self, model: EncoderDecoder) -> Callable[[Any], list[Any]]:
        """For one streamed answer: a function from each decoded output to the JSON of the
        stream events it completes (zero or more). By default one event per output
        (`token_text`); a task whose unit spans several outputs (music: a time step of several
        note tokens) buffers them here and sends one event per unit."""
        return lambda item: [self.token_text(item, model)]

    def binary_response(self, output: dict[str, Any]) -> tuple[bytes, str] | None:
        """(content, media type) when `POST /v1/<task>` should answer with a file instead of JSON
        (e.g. `format=midi` → audio/midi); None for JSON. A client that sends
        `Accept: application/json` still gets the JSON."""
        return None

    def v2_input(self, name: str, value: np.ndarray, parameters: dict[str, Any] | None = None) -> tuple[bytes, str | None]:
        """One batch row of a numeric v2 input (a non-BYTES entry of `v2_inputs`) as the bytes
        and content type `preprocess` takes; raise InputError for values it cannot take.
        `parameters` are the input tensor's own (e.g. speech's WAVEFORM `sample_rate`)."""
        raise InputError(f"task {self.name!r} takes no numeric v2 input {name!r}")

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        """Map one `postprocess` result to Open Inference Protocol output tensors by name."""
        return {}

    def train(self, options: TrainOptions, logger: RunLogger) -> TrainResult:
        """Train a model and write its artifact directory to `options.output_dir`."""
        raise NotImplementedError(f"task {self.name!r} has no training recipe")

    def evaluate(self, artifact_dir: Path, logger: RunLogger, device: str = "cpu") -> dict[str, float]:
        """Score a trained model on the task's test split."""
        raise NotImplementedError(f"task {self.name!r} has no evaluation recipe")
