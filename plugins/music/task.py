"""The music task: continue a primer (or compose from nothing), harmonise a melody, score a
piece; answers as JSON steps with times, or as a MIDI, WAV or piano-roll PNG file (base64 in
the JSON for clients that ask for JSON)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnprocessableInput
from mmserve.plugins.music.checkpoint import load_music_model
from mmserve.plugins.music.evaluate import HARMONY_DIR
from mmserve.plugins.music.midi import piece_to_midi_bytes
from mmserve.plugins.music.preprocess import CONTENT_TYPES, MAX_GENERATED_STEPS, MusicOptions, parse_piece
from mmserve.plugins.music.render import midi_to_wav, piano_roll_png
from mmserve.plugins.music.scoring import score_output, score_piece
from mmserve.plugins.music.served import ServedMusic
from mmserve.plugins.music.tokens import (
    EOS_ID,
    FIRST_PITCH_ID,
    NUM_PITCHES,
    STEP_ID,
    piece_to_roll,
    steps_to_tokens,
    token_to_pitch,
    tokens_to_piece,
    tokens_to_steps,
)
from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.decoding import DecodeResult
from mmserve.plugins.task import InputLimits, Prepared, Task, TensorSpec, TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
STEPS_PER_BEAT = {"quarter": 1, "harmony": 4}
ROUTE_OF_MODE = {"continue": "quarter", "score": "quarter", "harmonize": "harmony"}


def requested_steps(options: MusicOptions) -> int:
    """Time steps a continue request asks for: `length` steps, or beats at one step per beat
    (continuation is trained on the quarter-note split)."""
    return options.length * (STEPS_PER_BEAT["quarter"] if options.length_unit == "beats" else 1)


class MusicTask(Task):
    name = "music"
    description = (
        "Bach-chorale music: continue a primer (MIDI or JSON pitch lists; empty = compose), "
        "options mode, length (time steps), tempo, format (json | midi | wav | png)."
    )
    content_types = CONTENT_TYPES
    binary_media_types = ("audio/midi", "audio/wav", "image/png")  # format=midi | wav | png
    # PRIMER: a MIDI file (or JSON pitch lists); NOTES: time steps x voices of MIDI pitches, -1
    # for a silent voice (as in Jsb16thSeparated), sent as [N, steps, voices] for N requests.
    v2_inputs = (TensorSpec("PRIMER", "BYTES", (1,)), TensorSpec("NOTES", "INT32", (-1, -1)))
    v2_outputs = (TensorSpec("MIDI", "BYTES", (1,)), TensorSpec("NOTES", "BYTES", (1,)))
    # Tokens, not steps. The model ends each row itself after its steps, and a generated step
    # takes at most TOKENS_PER_STEP tokens, so a request's token budget follows from its steps;
    # the output limit (tasks.music.max_output_length, in tokens) bounds the steps one may ask for.
    default_max_length = steps_to_tokens(16)
    max_output_length = steps_to_tokens(MAX_GENERATED_STEPS)
    request_options = MusicOptions

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        """The artifact's model, plus the harmonisation model in its `harmony/` folder when
        there is one: both serve through one ServedMusic, each request routed by its mode."""
        models = {}
        for directory in (Path(artifact_dir), Path(artifact_dir) / HARMONY_DIR):
            if (directory / "config.json").is_file():
                model = load_music_model(directory, device)
                models.setdefault(model.trained_for, model)
        return ServedMusic(models).to(device).eval()

    def output_length(self, options: BaseModel | None, limit: int) -> int | None:
        """Tokens for the requested steps (continue); a melody's length is known only after
        preprocess, which checks it (harmonize)."""
        assert options is None or isinstance(options, MusicOptions), f"expected MusicOptions, got {type(options).__name__}"
        options = options or MusicOptions()
        if options.mode != "continue":
            return limit
        steps = requested_steps(options)
        if steps > tokens_to_steps(limit):
            asked = f"{options.length} steps" if options.length_unit == "steps" else f"{options.length} beats ({steps} steps)"
            raise UnprocessableInput(
                f"length {asked} is over this task's limit of {tokens_to_steps(limit)} steps "
                f"(max_output_length {limit} tokens)"
            )
        return steps_to_tokens(steps)

    def bundled_artifacts(self) -> Path | None:
        return WEIGHTS_DIR

    def preprocess(
        self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits,
        options: MusicOptions | None = None,
    ) -> Any:  # fmt: skip
        assert isinstance(model, ServedMusic), f"music needs a ServedMusic, got {type(model).__name__}"
        options = options or MusicOptions()
        route = ROUTE_OF_MODE[options.mode]
        if not model.serves(route):
            what = {"quarter": "a continuation model", "harmony": "a harmonisation model"}[route]
            raise UnprocessableInput(f"mode={options.mode} needs {what}; the served artifact has none")
        piece = parse_piece(data, content_type, STEPS_PER_BEAT[route])
        if options.mode == "score":
            if not any(piece):
                raise UnprocessableInput("mode=score needs a piece with notes to score")
            # Scored here, in the preprocessing thread, with the evaluation's own code; the
            # engine then only ends the row at once (a step budget of -1).
            step_log_p = score_piece(model.model(route), piece)
            return Prepared((torch.zeros(0, NUM_PITCHES), -1), {"step_log_probs": step_log_p})
        if options.mode == "harmonize":
            if not piece:
                raise UnprocessableInput("mode=harmonize needs a melody")
            limit = limits.max_output_length or self.max_output_length
            if len(piece) > tokens_to_steps(limit):
                raise PayloadTooLarge(
                    f"a melody of {len(piece)} steps is over this task's output limit of {tokens_to_steps(limit)} "
                    f"steps (max_output_length {limit} tokens)"
                )
            return Prepared((piece_to_roll(piece), len(piece), route), {"melody": piece})
        return piece_to_roll(piece), requested_steps(options)  # an empty primer is the null memory

    def input_cost(self, inputs: Any) -> int:
        return max(int(inputs[0].shape[0]), 1)

    def postprocess(
        self, result: DecodeResult, model: EncoderDecoder, include_attention: bool, options: MusicOptions | None = None,
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        options = options or MusicOptions()
        if options.mode == "score":
            return score_output(context["step_log_probs"] if context else [])
        route = ROUTE_OF_MODE[options.mode]
        piece = tokens_to_piece(t for t in result.tokens if t != EOS_ID)
        melody = (context or {}).get("melody")
        if melody is not None:  # harmonize: the melody's notes sound with the written voices
            piece = [sorted(set(m) | set(low)) for m, low in zip(melody, piece)]
        seconds = 60.0 / options.tempo / STEPS_PER_BEAT[route]
        output: dict[str, Any] = {
            "mode": options.mode,
            "tempo": options.tempo,
            "seconds_per_step": seconds,
            "num_steps": len(piece),
            "finished": bool(result.finished),
            "log_prob": float(result.score),
            "steps": [{"time": round(t * seconds, 4), "duration": round(seconds, 4), "notes": notes}
                      for t, notes in enumerate(piece)],  # fmt: skip
        }
        if melody is not None:
            for step, notes in zip(output["steps"], melody):
                step["melody"] = list(notes)
        if options.format != "json":
            midi = piece_to_midi_bytes(piece, options.tempo, STEPS_PER_BEAT[route])
            payload, media = {
                "midi": (lambda: midi, "audio/midi"),
                "wav": (lambda: midi_to_wav(midi), "audio/wav"),
                "png": (lambda: piano_roll_png(piece, f"{len(piece)} steps"), "image/png"),
            }[options.format]
            output["content_type"] = media
            output["data"] = base64.b64encode(payload()).decode("ascii")
        return output

    def binary_response(self, output: dict[str, Any]) -> tuple[bytes, str] | None:
        # format=midi | wav | png answers with the file itself (audio/midi, audio/wav, image/png).
        if "data" not in output:
            return None
        return base64.b64decode(output["data"]), output["content_type"]

    def token_text(self, item: Any, model: EncoderDecoder) -> Any:
        # One token: a pitch as its MIDI number, the end of a step as "|".
        if item == STEP_ID:
            return "|"
        return token_to_pitch(int(item)) if isinstance(item, int) and item >= FIRST_PITCH_ID else str(item)

    def stream_items(self, model: EncoderDecoder) -> Callable[[Any], list[Any]]:
        """Streaming sends one event per time step: {"step": t, "notes": [MIDI pitches]}, once
        the step's <step> token is chosen (a harmonised step holds the written voices only)."""
        notes: list[int] = []
        steps = 0

        def on_token(item: Any) -> list[Any]:
            nonlocal steps
            if item == STEP_ID:
                event = {"step": steps, "notes": list(notes)}
                notes.clear()
                steps += 1
                return [event]
            if isinstance(item, int) and item >= FIRST_PITCH_ID:
                notes.append(token_to_pitch(item))
            return []

        return on_token

    def v2_input(self, name: str, value: np.ndarray, parameters: dict[str, Any] | None = None) -> tuple[bytes, str | None]:
        """NOTES [steps, voices] INT32 -> the JSON pitch lists preprocess takes (-1: silent)."""
        if name != "NOTES":
            return super().v2_input(name, value, parameters)
        if value.ndim != 2:
            raise InputError(f"NOTES must be [steps, voices] per request (shape [N, steps, voices]), got {list(value.shape)} per request")
        steps = [[int(p) for p in row if p >= 0] for row in value]
        return json.dumps(steps).encode(), "application/json"

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        if output.get("mode") == "score":  # no music comes back: NOTES carries the score as JSON
            keys = ("nll", "num_steps", "nll_per_step", "step_nll")
            return {"MIDI": b"", "NOTES": json.dumps({k: output[k] for k in keys})}
        piece = [step["notes"] for step in output["steps"]]
        midi = piece_to_midi_bytes(piece, output["tempo"], max(int(round(60.0 / output["tempo"] / output["seconds_per_step"])), 1))
        return {"MIDI": midi, "NOTES": json.dumps(piece)}

    def train(self, options: TrainOptions, logger: RunLogger) -> TrainResult:
        from mmserve.plugins.music.train import train_music

        return train_music(options, logger)

    def evaluate(self, artifact_dir: Path, logger: RunLogger, device: str = "cpu") -> dict[str, float]:
        from mmserve.plugins.music.evaluate import evaluate_artifact

        return evaluate_artifact(Path(artifact_dir), logger, device)
