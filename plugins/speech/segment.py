"""Long recordings in pieces the model can transcribe: cut at the quietest moments.

The speller learned from clips of a few seconds; on a minute of speech its attention loses its
place. A long upload is cut into segments of at most `max_s` seconds, each cut at the quietest
stretch (the pause between words or sentences) that leaves the segment at least `min_s` long.
The segments are decoded side by side (they batch in the engine like separate requests) and
their transcripts joined, with word times moved to the recording's clock (task.py).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02
QUIET_WINDOW_S = 0.3  # a cut goes in the middle of the quietest stretch this long


def frame_levels(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Energy in dB of each 20 ms frame of a mono waveform."""
    frame = max(1, int(FRAME_S * sample_rate))
    frames = len(wave) // frame
    power = np.square(wave[: frames * frame].astype(np.float64)).reshape(frames, frame).mean(axis=1)
    return 10 * np.log10(power + 1e-12)


def segment_bounds(wave: np.ndarray, sample_rate: int, max_s: float, min_s: float) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering the whole waveform, each at most `max_s` seconds
    (one range when the clip is that short), cut where a `QUIET_WINDOW_S` stretch is quietest
    between `min_s` and `max_s` after the previous cut."""
    assert 0 < min_s < max_s, f"need 0 < min_s < max_s, got {min_s}, {max_s}"
    total = len(wave)
    if total <= max_s * sample_rate:
        return [(0, total)]
    frame = max(1, int(FRAME_S * sample_rate))
    window = max(1, int(QUIET_WINDOW_S / FRAME_S))
    # the mean level of the stretch of `window` frames centred on each frame
    level = np.convolve(frame_levels(wave, sample_rate), np.ones(window) / window, mode="same")
    bounds, start = [], 0
    while total - start > max_s * sample_rate:
        first = (start + int(min_s * sample_rate)) // frame
        last = (start + int(max_s * sample_rate)) // frame
        cut = (first + int(np.argmin(level[first:last]))) * frame
        bounds.append((start, cut))
        start = cut
    bounds.append((start, total))
    return bounds
