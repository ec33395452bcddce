"""Serving latency of a running server: the same uploads at each concurrency.

Shared by the task clients (`python -m mmserve.plugins.speech.latency`,
`python -m mmserve.plugins.action.latency`): each builds its uploads from its own test split
and hands them here. For each concurrency it reports p50 / p99 request latency, throughput,
and the real-time factor (wall time to answer every upload / seconds of media in them; below
1 is faster than real time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    content_type: str
    seconds: float  # of audio or video in it


async def _run(url: str, uploads: list[Upload], concurrency: int, transport: Any = None) -> tuple[list[float], float]:
    import httpx

    queue: asyncio.Queue[Upload] = asyncio.Queue()
    for upload in uploads:
        queue.put_nowait(upload)
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            upload = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(url, files={"file": (upload.filename, upload.data, upload.content_type)})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=300, transport=transport) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def measure(
    url: str, uploads: list[Upload], concurrencies: list[int], warmup: int = 2, transport: Any = None
) -> list[dict[str, float]]:
    """POST every upload to `url` (multipart `file`) at each concurrency; one row per concurrency.
    `transport`: an httpx transport (tests)."""
    assert uploads, "no uploads to send"
    asyncio.run(_run(url, uploads[:warmup], 1, transport))  # first requests pay for lazy loading
    media_s = sum(u.seconds for u in uploads)
    rows = []
    for concurrency in concurrencies:
        latencies, wall = asyncio.run(_run(url, uploads, concurrency, transport))
        rows.append({"concurrency": concurrency, "requests": len(uploads), "media_s": round(media_s, 1),
                     "p50_s": round(float(np.percentile(latencies, 50)), 3),
                     "p99_s": round(float(np.percentile(latencies, 99)), 3),
                     "requests_per_s": round(len(uploads) / wall, 2),
                     "rtf": round(wall / media_s, 3)})  # fmt: skip
    return rows


def main(description: str, task: str, uploads: Callable[..., list[Upload]], options: dict[str, dict[str, Any]] | None = None,
         argv: list[str] | None = None) -> None:  # fmt: skip
    """The command line of a task's latency client: `uploads(count, **task_options)` builds its
    test uploads; `options` are the task's own flags (argparse keyword arguments by flag)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, spec in (options or {}).items():
        parser.add_argument(flag, **spec)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default=task, help="the task's name on the server")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--params", default="", help="decoding parameters as a query string, e.g. beam_size=1")
    args = parser.parse_args(argv)
    url = f"{args.url}/v1/{args.task}" + (f"?{args.params}" if args.params else "")
    task_options = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_")) for flag in options or {}}
    print(json.dumps(measure(url, uploads(args.clips, **task_options), args.concurrency), indent=1))
