"""Latency and real-time factor of a running server on test-split clips.

    python -m mmserve.plugins.speech.latency --url http://127.0.0.1:8000 --clips 48 --concurrency 1 8

For each concurrency: p50 / p99 request latency, and the real-time factor (wall time to
answer every clip / total audio seconds; below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
import wave

import numpy as np


def pcm16_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """Mono float samples in [-1, 1] as 16-bit PCM WAV bytes (what a client uploads)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


async def _run(url: str, clips: list[bytes], concurrency: int) -> tuple[list[float], float]:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for clip in clips:
        queue.put_nowait(clip)
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            clip = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/speech", files={"file": ("clip.wav", clip, "audio/wav")})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def main() -> None:
    from mmserve.plugins.speech.data import SPLIT_SIZES, SpeechClips, default_cache_dir, split_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    test = SpeechClips(split_dir(default_cache_dir(), "test", SPLIT_SIZES))
    waves = [test.wave(i) for i in range(min(args.clips, len(test)))]
    clips = [pcm16_wav(w) for w in waves]
    audio_s = sum(len(w) for w in waves) / 16000
    asyncio.run(_run(args.url, clips[:2], 1))  # warm-up
    rows = []
    for concurrency in args.concurrency:
        latencies, wall = asyncio.run(_run(args.url, clips, concurrency))
        rows.append({"concurrency": concurrency, "clips": len(clips), "audio_s": round(audio_s, 1),
                     "p50_s": round(float(np.percentile(latencies, 50)), 3),
                     "p99_s": round(float(np.percentile(latencies, 99)), 3),
                     "rtf": round(wall / audio_s, 3)})  # fmt: skip
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
