"""Request bytes -> normalised log-mel features through the shared PyAV audio decoder."""

from __future__ import annotations

import functools

import torch

from mmserve.plugins.media import decode_audio
from mmserve.plugins.speech.features import FeatureConfig, LogMel
from mmserve.plugins.task import InputLimits

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


def audio_bytes_to_features(data: bytes, content_type: str | None, config: FeatureConfig, limits: InputLimits) -> torch.Tensor:
    """Any audio upload (resampled, downmixed) -> features [T, n_mels]; 4xx errors on bad input."""
    wave = decode_audio(
        data, content_type, sample_rate=config.sample_rate, max_upload_bytes=limits.max_upload_bytes,
        max_duration_s=limits.max_duration_s,
    )  # fmt: skip
    return featurize(wave, config)
