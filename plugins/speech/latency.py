"""Latency and real-time factor of a running server on test-split clips.

    python -m mmserve.plugins.speech.latency --url http://127.0.0.1:8000 --clips 48 --concurrency 1 8

For each concurrency: p50 / p99 request latency, throughput, and the real-time factor (wall
time to answer every clip / total audio seconds; below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import io
import json
import wave

import numpy as np

from mmserve.plugins.latency import Upload, measure


def pcm16_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """Mono float samples in [-1, 1] as 16-bit PCM WAV bytes (what a client uploads)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


def main() -> None:
    from mmserve.plugins.speech.data import SPLIT_SIZES, SpeechClips, default_cache_dir, split_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default="speech")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    test = SpeechClips(split_dir(default_cache_dir(), "test", SPLIT_SIZES))
    waves = [test.wave(i) for i in range(min(args.clips, len(test)))]
    uploads = [Upload("clip.wav", pcm16_wav(w), "audio/wav", len(w) / 16000) for w in waves]
    print(json.dumps(measure(f"{args.url}/v1/{args.task}", uploads, args.concurrency), indent=1))


if __name__ == "__main__":
    main()
