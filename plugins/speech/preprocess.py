"""Request bytes -> normalised log-mel features through the shared PyAV audio decoder."""

from __future__ import annotations

import functools
import struct
from typing import Any

import numpy as np
import torch

from mmserve.plugins.errors import InputError
from mmserve.plugins.media import decode_audio
from mmserve.plugins.media.audio import MAX_SAMPLE_RATE
from mmserve.plugins.speech.features import FeatureConfig, LogMel
from mmserve.plugins.speech.segment import speech_parts
from mmserve.plugins.task import InputLimits, Segments

CONTENT_TYPES = (
    "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac", "audio/ogg",
    "audio/opus", "audio/mpeg", "audio/mp3", "audio/webm", "video/webm", "audio/mp4", "audio/m4a",
    "audio/x-m4a", "audio/aac", "video/mp4",
)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _featurizer(sample_rate: int, n_mels: int, n_fft: int, hop_length: int) -> LogMel:
    # One per feature configuration; its mel filterbank is built once, not per request.
    return LogMel(FeatureConfig(sample_rate, n_mels, n_fft, hop_length))


def featurize(wave: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Mono waveform [N] at config.sample_rate -> features [T, n_mels]."""
    return _featurizer(config.sample_rate, config.n_mels, config.n_fft, config.hop_length)(wave)


def decode_upload(data: bytes, content_type: str | None, config: FeatureConfig, limits: InputLimits) -> torch.Tensor:
    """Any audio upload -> a mono waveform [N] at config.sample_rate; 4xx errors on bad input."""
    return decode_audio(
        data, content_type, sample_rate=config.sample_rate, max_upload_bytes=limits.max_upload_bytes,
        max_duration_s=limits.max_duration_s,
    )  # fmt: skip


def audio_bytes_to_features(data: bytes, content_type: str | None, config: FeatureConfig, limits: InputLimits) -> torch.Tensor:
    """Any audio upload (resampled, downmixed) -> features [T, n_mels]; 4xx errors on bad input."""
    return featurize(decode_upload(data, content_type, config, limits), config)


def audio_bytes_to_segments(
    data: bytes, content_type: str | None, config: FeatureConfig, limits: InputLimits, max_s: float, min_s: float,
    keep_silence_s: float,
) -> torch.Tensor | Segments:
    """Features [T, n_mels] of an upload of at most `max_s` seconds with at most `keep_silence_s`
    of silence before and after its speech; a longer one cut at its quietest moments into
    Segments of such features (segment.py's speech_parts), each normalised on its own as a short
    clip would be. Segments also when one part starts after the upload does, so that word times
    stay on the upload's clock."""
    wave = decode_upload(data, content_type, config, limits)
    parts = speech_parts(wave.numpy(), config.sample_rate, max_s, min_s, keep_silence_s)
    if parts == [(0, len(wave))]:
        return featurize(wave, config)
    return Segments([featurize(wave[start:end], config) for start, end in parts],
                    [start / config.sample_rate for start, _ in parts], len(wave) / config.sample_rate)  # fmt: skip


def waveform_to_wav(samples: np.ndarray, parameters: dict[str, Any] | None, default_rate: int) -> bytes:
    """An FP32 waveform [N] (the v2 WAVEFORM input) with its `sample_rate` parameter (default:
    the model's rate) -> a 32-bit float WAV, which preprocessing then treats like any upload
    (resampling, duration and size limits). InputError for a wrong shape, rate or value."""
    rate = (parameters or {}).get("sample_rate", default_rate)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"WAVEFORM's sample_rate parameter must be a whole number of Hz from 1 to {MAX_SAMPLE_RATE}, got {rate!r}")
    if samples.ndim != 1 or samples.shape[0] == 0:
        raise InputError(f"WAVEFORM must be [N, samples] with samples >= 1 (one mono waveform per row), got {list(samples.shape)} per row")
    if not np.isfinite(samples).all():
        raise InputError("WAVEFORM holds NaN or infinite samples")
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    # RIFF header, format 3 (IEEE float), mono, 32 bits a sample.
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return b"".join([b"RIFF", struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)), b"WAVE",
                     b"fmt ", struct.pack("<I", len(fmt)), fmt, b"data", struct.pack("<I", len(data)), data])  # fmt: skip
