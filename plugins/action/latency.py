"""Latency and throughput of a running server on 2-second test-split clips.

    python -m mmserve.plugins.action.latency --url http://127.0.0.1:8000 --clips 48 --concurrency 1 8

The clips are test-split clips of 16 frames written as MP4 (H.264) at 8 frames per second,
the model's training pace: 2 seconds each. For each concurrency: p50 / p99 request latency,
throughput, and the real-time factor (wall time / seconds of video).
"""

from __future__ import annotations

import argparse
import json

from mmserve.plugins.latency import Upload, measure

FPS = 8
FRAMES = 2 * FPS  # 2 seconds


def two_second_clips(count: int, seed: int = 0) -> list[Upload]:
    """`count` test-split clips that are exactly 2 seconds long, as MP4 uploads."""
    from mmserve.plugins.action.clips import sample_clip
    from mmserve.plugins.action.data import encode_video
    from mmserve.plugins.action.render import render_clip

    uploads, index = [], 0
    while len(uploads) < count:
        spec = sample_clip("test", index, seed)
        index += 1
        if spec.num_frames == FRAMES:
            uploads.append(Upload("clip.mp4", encode_video(render_clip(spec), "mp4", FPS), "video/mp4", FRAMES / FPS))
    return uploads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default="action")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    rows = measure(f"{args.url}/v1/{args.task}", two_second_clips(args.clips), args.concurrency)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
