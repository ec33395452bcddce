"""Waveform -> log-mel features, normalised per utterance (mean 0, variance 1 per mel band)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400  # 25 ms window
    hop_length: int = 160  # 10 ms hop: 100 frames per second

    def to_dict(self) -> dict:
        return asdict(self)


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
        return normalize_utterance(logmel)


def normalize_utterance(features: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean/variance normalisation over time; [T, F] -> [T, F]."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, keepdim=True) if features.shape[0] > 1 else torch.ones_like(mean)
    return (features - mean) / std.clamp_min(1e-3)


def frames_for(samples: int, config: FeatureConfig) -> int:
    """Feature frames of a waveform of `samples` samples (MelSpectrogram is centred)."""
    return samples // config.hop_length + 1
