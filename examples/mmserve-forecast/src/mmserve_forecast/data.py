"""Synthetic training and test series: a sine plus a linear trend plus Gaussian noise, each
with its own random level, amplitude, period, phase, trend and noise (all generated in code)."""

from __future__ import annotations

import numpy as np

PERIODS = (6.0, 40.0)  # steps per cycle
AMPLITUDES = (0.5, 3.0)
LEVELS = (-10.0, 10.0)
TREND_PER_STEP = 0.03  # times the amplitude, either sign
NOISE = (0.02, 0.3)  # times the amplitude


def make_series(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """`count` independent series of `length` values, float32 [count, length]."""
    t = np.arange(length, dtype=np.float64)[None, :]  # [1, L]
    amplitude = rng.uniform(*AMPLITUDES, size=(count, 1))
    period = rng.uniform(*PERIODS, size=(count, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(count, 1))
    level = rng.uniform(*LEVELS, size=(count, 1))
    trend = rng.uniform(-TREND_PER_STEP, TREND_PER_STEP, size=(count, 1)) * amplitude
    noise = rng.uniform(*NOISE, size=(count, 1)) * amplitude
    clean = level + trend * t + amplitude * np.sin(2 * np.pi * t / period + phase)
    return (clean + noise * rng.standard_normal((count, length))).astype(np.float32)
