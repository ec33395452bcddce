"""The speech task: what the server needs to serve, train and evaluate speech-to-text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmserve.plugins.nn.contract import EncoderDecoder
from mmserve.plugins.nn.search import DecodeResult
from mmserve.plugins.speech.checkpoint import load_speech_model
from mmserve.plugins.speech.features import FeatureConfig
from mmserve.plugins.speech.model import ListenAttendSpell
from mmserve.plugins.speech.preprocess import CONTENT_TYPES, audio_bytes_to_segments, waveform_to_wav
from mmserve.plugins.task import InputLimits, Segments, Task, TensorSpec, TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SAMPLE_RATE = FeatureConfig().sample_rate  # a WAVEFORM without a sample_rate parameter is at this rate


class SpeechTask(Task):
    name = "speech"
    description = (
        "Transcribe English speech (Listen, Attend and Spell over characters, trained on synthetic "
        "espeak-ng speech). Any sample rate or channel count; WAV, FLAC, OGG/Opus, MP3, WebM or M4A."
    )
    content_types = CONTENT_TYPES
    # AUDIO: an encoded file per row; WAVEFORM: FP32 samples per row, `sample_rate` parameter (default 16000).
    v2_inputs = (TensorSpec("AUDIO", "BYTES", (1,)), TensorSpec("WAVEFORM", "FP32", (1, -1)))
    v2_outputs = (TensorSpec("TEXT", "BYTES", (1,)), TensorSpec("SCORE", "FP32", (1,)))
    default_max_length = 400  # characters: about 25 s of fast speech
    # Serves OpenAI-compatible `POST /v1/audio/transcriptions` too (server/http/routes_openai.py).
    transcribes = True
    keeps_attention = True  # word times come from the attention alignment
    # Requests that name no beam get eval's (evaluate.BEAM_SIZE and LENGTH_PENALTY, chosen on
    # val): on the test split it is ~15 WER points better than greedy, for ~3x the decoding time offline.
    default_beam_size = 8
    default_length_penalty = 0.6
    # Longer uploads are cut in their pauses into segments of 1.5 to 5 s (about a sentence, as
    # the training clips hold; segment.py), decoded side by side and joined: the speller, trained
    # on a few seconds, loses its place in a minute of speech. Chosen on recordings of 4 val clips
    # (stage-10 model at step 400, greedy WER): max 5 s 69.5 %, 6 s 72.5 %, 4 s 82.3 %; min 1.5 s
    # 69.5 %, 1 s 70.1 %, 2 s 70.6 %; pauses from 0.25 s (0.15 s: 74.3 %, 0.4 s: 71.9 %).
    # Checked again on the stage-18 model (beam 8, w = 0.1; val clips as they are / padded / 2 and
    # 4 a recording): 5 s 23.5 / 34.8 / 38.4 / 40.5 %, 6 s 23.6 / 33.7 / 43.5 / 43.9 %, 8 s 22.5 /
    # 32.6 / 49.2 / 46.4 %: longer segments help single sentences and hurt recordings of several.
    # (`python -m mmserve.plugins.speech.tune --model-dir plugins/speech/weights --segment-report 5 6 8`)
    # `tasks.speech.max_segment_s` overrides the maximum (e.g. for a model trained on longer clips).
    segment_max_s = 5.0
    segment_min_s = 1.5
    # Silence kept before and after the speech of each part; beyond it, cut (segment.py). Chosen
    # on the 200 val clips as they are and with half a second of their background before and
    # after (stage-10 model, greedy WER, features normalised on the speech +- 0.2 s): 0.3 s
    # 48.5 / 70.6 %, 0.4 s 47.4 / 70.8 %, 0.5 s 47.1 / 74.3 %, uncut 46.8 / 79.4 %.
    # (`python -m mmserve.plugins.speech.tune --model-dir <stage 10> --stats-margin-s 0.2 --silence-report 0.3 0.4 0.5 1000`)
    # Checked again on stages 24 and 25 (TRAINING_LOG.md, "The silence kept around the speech"):
    # 0.6 s leads by 0.2-0.4 points of val beam WER, within the noise, so 0.4 s stays.
    keep_silence_s = 0.4
    segment_separator = " "

    def load_model(self, artifact_dir: Path, device: torch.device) -> EncoderDecoder:
        return load_speech_model(artifact_dir, device)

    def bundled_artifacts(self) -> Path | None:
        return WEIGHTS_DIR if (WEIGHTS_DIR / "weights.safetensors").is_file() else None

    @classmethod
    def segment_lengths(cls, max_segment_s: float | None = None) -> tuple[float, float]:
        """(longest, shortest) segment in seconds: `max_segment_s` (a setting) or the task's own,
        and a shortest that leaves room for two segments under it."""
        max_s = max_segment_s or cls.segment_max_s
        return max_s, min(cls.segment_min_s, max_s / 2)

    def preprocess(self, data: bytes, content_type: str | None, model: EncoderDecoder, limits: InputLimits) -> Any:
        assert isinstance(model, ListenAttendSpell), f"speech needs a ListenAttendSpell, got {type(model).__name__}"
        max_s, min_s = self.segment_lengths(limits.max_segment_s)
        return audio_bytes_to_segments(data, content_type, model.config.features, limits, max_s, min_s, self.keep_silence_s)

    def join_segments(self, outputs: list[dict[str, Any]], segments: Segments) -> dict[str, Any]:
        """One transcript of a long upload's segments: texts joined by spaces, word times and
        each segment's span moved to the upload's clock, scores added, and the attention maps
        (when asked for) as one block-diagonal map over the whole upload."""
        texts = [o["text"] for o in outputs]
        joined: dict[str, Any] = {"text": " ".join(t for t in texts if t), "tokens": [], "score": 0.0, "words": []}
        for output, start in zip(outputs, segments.starts):
            if joined["tokens"] and output["tokens"]:
                joined["tokens"].append(" ")
            joined["tokens"] += output["tokens"]
            joined["score"] += output["score"]
            joined["words"] += [{**w, "start": round(w["start"] + start, 3), "end": round(w["end"] + start, 3)}
                                for w in output["words"]]  # fmt: skip
        if all("duration" in o for o in outputs):
            end = segments.starts[-1] + outputs[-1]["duration"]
            joined["duration"] = round(max(end, segments.length or 0.0), 3)
            joined["segments"] = [{"start": round(start, 3), "end": round(start + o["duration"], 3), "text": o["text"]}
                                  for o, start in zip(outputs, segments.starts) if o["text"]]  # fmt: skip
        if all("attention" in o for o in outputs):
            joined["attention"] = block_diagonal([o["attention"] for o in outputs], [len(o["tokens"]) for o in outputs])
        return joined

    def input_cost(self, inputs: Any) -> int:
        return int(inputs.shape[0])  # feature frames: what the listener's time costs

    def postprocess(self, result: DecodeResult, model: EncoderDecoder, include_attention: bool) -> dict[str, Any]:
        assert isinstance(model, ListenAttendSpell), f"speech needs a ListenAttendSpell, got {type(model).__name__}"
        chars = [model.vocab.itos[t] for t in result.tokens if t > model.vocab.unk_id]
        text = " ".join("".join(chars).split())
        output: dict[str, Any] = {"text": text, "tokens": chars, "score": float(result.score)}
        seconds = model.frames_per_position * model.config.features.hop_length / model.config.features.sample_rate
        output["words"] = word_times(result, model, seconds) if result.attention is not None else []
        if result.attention is not None:  # the memory covers the whole clip, 80 ms a position
            output["duration"] = round(result.attention.shape[1] * seconds, 3)
        if include_attention and result.attention is not None:
            output["attention"] = [[round(v, 4) for v in row] for row in result.attention.float().tolist()]
        return output

    def v2_input(self, name: str, value: np.ndarray, parameters: dict[str, Any] | None = None) -> tuple[bytes, str | None]:
        """WAVEFORM: one row of FP32 samples at `sample_rate` Hz -> a float WAV for preprocess."""
        if name != "WAVEFORM":
            return super().v2_input(name, value, parameters)
        return waveform_to_wav(value, parameters, SAMPLE_RATE), "audio/wav"

    def to_v2_outputs(self, output: dict[str, Any]) -> dict[str, Any]:
        return {"TEXT": output["text"], "SCORE": float(output["score"])}

    def train(self, options: TrainOptions, logger: RunLogger) -> TrainResult:
        from mmserve.plugins.speech.data import EspeakMissing
        from mmserve.plugins.speech.train import train_speech

        try:
            return train_speech(options, logger)
        except EspeakMissing as error:
            raise SystemExit(f"speech training needs synthetic data: {error}") from None

    def evaluate(self, artifact_dir: Path, logger: RunLogger, device: str = "cpu") -> dict[str, float]:
        from mmserve.plugins.speech.data import EspeakMissing
        from mmserve.plugins.speech.evaluate import evaluate_artifact

        try:
            return evaluate_artifact(Path(artifact_dir), logger, device)
        except EspeakMissing as error:
            raise SystemExit(f"speech evaluation needs the synthetic test set: {error}") from None


def block_diagonal(maps: list[list[list[float]]], tokens: list[int]) -> list[list[float]]:
    """Attention maps [T_k, N_k] of consecutive segments as one [T, N] map: segment k's rows
    over its own memory positions, zero elsewhere, with a zero row for the space between two
    segments' tokens (as `join_segments` puts one)."""
    width = sum(len(m[0]) if m else 0 for m in maps)
    rows: list[list[float]] = []
    column = 0
    for attention, count in zip(maps, tokens):
        span = len(attention[0]) if attention else 0
        if rows and count:
            rows.append([0.0] * width)
        rows += [[0.0] * column + row + [0.0] * (width - column - span) for row in attention]
        column += span
    return rows


def word_times(result: DecodeResult, model: ListenAttendSpell, seconds_per_position: float) -> list[dict[str, Any]]:
    """Words with start / end times from the attention alignment: each character's time is
    the centre of mass of its attention over memory positions (80 ms each); a word spans
    its earliest to its latest character (plus one position)."""
    attention = result.attention.float()  # [T, N]
    positions = torch.arange(attention.shape[1], dtype=torch.float32)
    centre = (attention * positions).sum(dim=1) / attention.sum(dim=1).clamp_min(1e-9)  # [T]
    words: list[dict[str, Any]] = []
    current: list[tuple[str, float]] = []
    tokens = list(result.tokens) + [None]  # a sentinel closes the last word
    for i, token in enumerate(tokens):
        char = model.vocab.itos[token] if token is not None and token > model.vocab.unk_id else " "
        if char != " ":
            current.append((char, float(centre[i])))
            continue
        if current:
            # min / max, not first / last: an alignment need not move forward within a word.
            start, end = min(t for _, t in current), max(t for _, t in current)
            words.append({"word": "".join(c for c, _ in current), "start": round(start * seconds_per_position, 3),
                          "end": round((end + 1) * seconds_per_position, 3)})  # fmt: skip
            current = []
    return words
