"""Long recordings in pieces the model can transcribe: cut at the quietest moments.

The speller learned from clips of one sentence, a few seconds long; on a minute of speech its
attention loses its place. A long upload is cut in its pauses (as a sentence per segment), and
a stretch of speech still longer than `max_s` seconds at its quietest moments.
The segments are decoded side by side (they batch in the engine like separate requests) and
their transcripts joined, with word times moved to the recording's clock (task.py). Every
part, a short upload too, loses the silence before and after its speech beyond a margin
(speech_parts), and features can be normalised on the speech alone (speech_span, features.py).
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


def segment_bounds(wave: np.ndarray, sample_rate: int, max_s: float, min_s: float, min_pause_s: float = 0.25) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering the whole waveform (one range when it is at most
    `max_s` seconds). A longer one is cut in the middle of every pause of at least
    `min_pause_s` (a stretch near the clip's noise floor) that leaves both sides at least
    `min_s` long, so that segments hold whole sentences, as the training clips do; a segment
    still over `max_s` is cut again where a `QUIET_WINDOW_S` stretch is quietest between
    `min_s` and `max_s` after the previous cut."""
    assert 0 < min_s < max_s, f"need 0 < min_s < max_s, got {min_s}, {max_s}"
    total = len(wave)
    if total <= max_s * sample_rate:
        return [(0, total)]
    frame = max(1, int(FRAME_S * sample_rate))
    raw = frame_levels(wave, sample_rate)
    window = max(1, int(QUIET_WINDOW_S / FRAME_S))
    level = moving_mean(raw, window)
    cuts = [c * frame for c in pause_middles(raw, int(min_pause_s / FRAME_S))]
    bounds, start = [], 0
    for cut in cuts + [total]:
        if cut - start < min_s * sample_rate or (cut < total and total - cut < min_s * sample_rate):
            continue
        while cut - start > max_s * sample_rate:  # no pause long enough: the quietest moment
            first = (start + int(min_s * sample_rate)) // frame
            last = (start + int(max_s * sample_rate)) // frame
            forced = (first + int(np.argmin(level[first:last]))) * frame
            bounds.append((start, forced))
            start = forced
        bounds.append((start, cut))
        start = cut
    if start < total:  # a tail shorter than min_s joins the last segment
        bounds[-1] = (bounds[-1][0], total) if bounds else (0, total)
    return bounds


def speech_parts(wave: np.ndarray, sample_rate: int, max_s: float, min_s: float, keep_silence_s: float) -> list[tuple[int, int]]:
    """[start, end) sample ranges to transcribe: the recording less the silence before and after
    its speech beyond `keep_silence_s`, whole when that is at most `max_s` seconds (silence does
    not make a sentence long: a clip of 4.5 s with half a second of background either side is
    not cut in two); else the segments of segment_bounds, each less its own silence, and none
    that holds no speech (judged against the whole recording's noise floor; see speech_frames).
    The model learned from clips that start and end near the speech: half a second of background
    before and after a test clip nearly doubled its errors (plugins/speech/README.md). A
    recording with no speech at all is one part, whole, so that it still gets its (empty)
    transcript."""
    frame = max(1, int(FRAME_S * sample_rate))
    loud = speech_frames(frame_levels(wave, sample_rate))
    keep = int(keep_silence_s * sample_rate)
    span = _around_speech(loud, 0, len(wave), frame, keep)
    if span is None:
        return [(0, len(wave))]
    if span[1] - span[0] <= max_s * sample_rate:
        return [span]
    parts = [_around_speech(loud, start, end, frame, keep) for start, end in segment_bounds(wave, sample_rate, max_s, min_s)]
    return [part for part in parts if part is not None] or [(0, len(wave))]


def _around_speech(loud: np.ndarray, start: int, end: int, frame: int, keep: int) -> tuple[int, int] | None:
    """[start, end) narrowed to its first to last speech frame and `keep` samples either side;
    None when it holds no speech frame."""
    inside = np.flatnonzero(loud[start // frame : -(-end // frame)]) + start // frame
    if len(inside) == 0:
        return None
    return max(start, int(inside[0]) * frame - keep), min(end, (int(inside[-1]) + 1) * frame + keep)


def speech_span(wave: np.ndarray, sample_rate: int, margin_s: float) -> tuple[int, int]:
    """[start, end) of the waveform less the quiet stretches before its first and after its
    last speech (speech_frames), `margin_s` of them kept; the whole waveform when no frame
    stands out from its floor."""
    frame = max(1, int(FRAME_S * sample_rate))
    loud = speech_frames(frame_levels(wave, sample_rate))
    return _around_speech(loud, 0, len(wave), frame, int(margin_s * sample_rate)) or (0, len(wave))


def speech_frames(levels: np.ndarray, above_floor_db: float = 6.0, smooth_frames: int = 3) -> np.ndarray:
    """Which frames hold speech: where the level, smoothed over `smooth_frames` frames, is
    `above_floor_db` over the noise floor (the quietest tenth of frames). None under
    `2 * smooth_frames` frames: too few to tell speech from floor."""
    if len(levels) < 2 * smooth_frames:
        return np.zeros(len(levels), dtype=bool)
    return moving_mean(levels, smooth_frames) > floor_threshold(levels, above_floor_db)


def moving_mean(levels: np.ndarray, window: int) -> np.ndarray:
    """The mean level of the `window` frames centred on each frame, the first and last frames
    repeated past the ends: np.convolve's zero padding would read as loud (0 dB) there."""
    padded = np.pad(levels, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def pause_middles(levels: np.ndarray, min_frames: int, above_floor_db: float = 6.0) -> list[int]:
    """The middle frame of every run of at least `min_frames` frames within `above_floor_db`
    of the recording's noise floor (its quietest tenth of frames)."""
    quiet = levels < floor_threshold(levels, above_floor_db)
    middles, run_start = [], None
    for i, is_quiet in enumerate(np.append(quiet, False)):
        if is_quiet and run_start is None:
            run_start = i
        elif not is_quiet and run_start is not None:
            if i - run_start >= min_frames:
                middles.append((run_start + i) // 2)
            run_start = None
    return middles


def floor_threshold(levels: np.ndarray, above_floor_db: float) -> float:
    """`above_floor_db` over the recording's noise floor: the level of its quietest tenth of frames."""
    return float(np.percentile(levels, 10)) + above_floor_db
