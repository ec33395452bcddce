"""Latency and real-time factor of a running server on test-split clips.

    python -m mmserve.plugins.speech.latency --url http://127.0.0.1:8000 --clips 48 --concurrency 1 8
    python -m mmserve.plugins.speech.latency ... --params beam_size=1  # greedy instead of the default beam
    python -m mmserve.plugins.speech.latency ... --clips 24 --join 4  # ~12 s recordings, cut into segments

For each concurrency: p50 / p99 request latency, throughput, and the real-time factor (wall
time to answer every clip / total audio seconds; below 1 is faster than real time).
"""

from __future__ import annotations

import io
import wave

import numpy as np

from mmserve.plugins.latency import Upload, main


def pcm16_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """Mono float samples in [-1, 1] as 16-bit PCM WAV bytes (what a client uploads)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


def held_out_uploads(count: int, join: int = 1) -> list[Upload]:
    """The first `count` test-split clips as 16-bit WAV uploads; with `join` > 1, `count`
    recordings of `join` consecutive clips each, with pauses between them (the eval's long-form
    recordings, which the server cuts into segments again)."""
    from mmserve.plugins.speech.data import SPLIT_SIZES, SpeechClips, default_cache_dir, split_dir
    from mmserve.plugins.speech.evaluate import long_recordings

    test = SpeechClips(split_dir(default_cache_dir(), "test", SPLIT_SIZES))
    if join > 1:
        waves = [w for w, _ in long_recordings(test, join)][:count]
    else:
        waves = [test.wave(i) for i in range(min(count, len(test)))]
    return [Upload("clip.wav", pcm16_wav(w), "audio/wav", len(w) / 16000) for w in waves]


if __name__ == "__main__":
    join = {"type": int, "default": 1, "help": "test clips joined into each upload (long recordings, cut again by the server)"}
    main(__doc__, "speech", held_out_uploads, {"--join": join})
