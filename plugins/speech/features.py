"""Waveform -> log-mel features, normalised per utterance (mean 0, variance 1 per mel band)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio

from mmserve.plugins.speech.segment import speech_span


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400  # 25 ms window
    hop_length: int = 160  # 10 ms hop: 100 frames per second
    # Normalisation statistics from the speech and this many seconds around it (segment.py's
    # speech_span) rather than the whole utterance: a second of silence around a 3 s sentence
    # otherwise shifts every band's mean and variance, and the features with them (None: the
    # whole utterance, as models trained before this setting existed were).
    stats_margin_s: float | None = None

    def to_dict(self) -> dict:
        # Unset, the setting is left out: older configs, and their feature caches' keys, stay as they were.
        return {k: v for k, v in asdict(self).items() if not (k == "stats_margin_s" and v is None)}


class LogMel(torch.nn.Module):
    """waveform [N] -> features [T, n_mels], T = N // hop + 1."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels
        )

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        assert wave.dim() == 1, f"expected a mono waveform [N], got {tuple(wave.shape)}"
        spec = self.mel(wave.float())  # [n_mels, T]
        logmel = torch.log(spec + 1e-6).transpose(0, 1)  # [T, n_mels]
        if self.config.stats_margin_s is None:
            return normalize_utterance(logmel)
        start, end = speech_span(wave.detach().cpu().numpy(), self.config.sample_rate, self.config.stats_margin_s)
        hop = self.config.hop_length
        return normalize_utterance(logmel, logmel[start // hop : end // hop + 1])


def normalize_utterance(features: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Per-utterance mean/variance normalisation over time, with the statistics of `reference`
    (frames of the same utterance; default: all of them); [T, F] -> [T, F]."""
    reference = features if reference is None else reference
    mean = reference.mean(dim=0, keepdim=True)
    std = reference.std(dim=0, keepdim=True) if reference.shape[0] > 1 else torch.ones_like(mean)
    return (features - mean) / std.clamp_min(1e-3)


def frames_for(samples: int, config: FeatureConfig) -> int:
    """Feature frames of a waveform of `samples` samples (MelSpectrogram is centred)."""
    return samples // config.hop_length + 1
