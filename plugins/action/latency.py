"""Latency and throughput of a running server on 2-second test-split clips.

    python -m mmserve.plugins.action.latency --url http://127.0.0.1:8000 --clips 48 --concurrency 1 8

The clips are test-split clips of 16 frames written as MP4 (H.264) at 8 frames per second,
the model's training pace: 2 seconds each. For each concurrency: p50 / p99 request latency,
throughput, and the real-time factor (wall time / seconds of video).
"""

from __future__ import annotations

from mmserve.plugins.latency import Upload, main

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


if __name__ == "__main__":
    main(__doc__, "action", two_second_clips)
