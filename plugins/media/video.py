"""Video bytes -> sampled, resized RGB frames [T, 3, H, W] uint8, with limits.

MP4 (H.264), WebM (VP9), AVI (MJPEG, MPEG-4), animated GIF: anything FFmpeg reads through
PyAV. Nothing is decoded until the cheap checks pass, in this order: byte checks, open
(memory only, whitelisted demuxers), pixels per frame and duration from the header, then a
demux-only pass over the packets (no pixels) that yields the real timeline: each frame's
time, the clip's duration and how many frames the request would sample. Only then are
frames decoded, and only the sampled ones are converted and resized; decoding stops after
the last sampled frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np
import torch

from mmserve.plugins.errors import InputError, PayloadTooLarge
from mmserve.plugins.media.container import (
    check_media_bytes,
    check_not_truncated,
    check_riff_size,
    describe_streams,
    ffmpeg_errors,
    header_duration_s,
    open_container,
    require_decoder,
)


@dataclass
class VideoInfo:
    """What the clip was and which instants were sampled (seconds from the first frame)."""

    source_fps: float  # frames per second of the source (average); 0.0 when unknown
    duration_s: float  # first frame to the end of the last one
    source_frames: int  # frames in the source
    sampled_times_s: list[float]  # presentation time of each returned frame


def decode_video(
    data: bytes,
    content_type: str | None,
    *,
    frames: int | None = None,
    fps: float | None = None,
    size: tuple[int, int],
    max_upload_bytes: int,
    max_frames: int,
    max_pixels: int,
    max_duration_s: float,
) -> tuple[torch.Tensor, VideoInfo]:
    """Video bytes -> (uint8 RGB frames [T, 3, H, W] resized to `size` = (H, W), VideoInfo).

    Sampling: `frames=N` takes N frames evenly spaced over the clip (the frame shown at the
    middle of each of N equal slices), `fps=R` one frame every 1/R s from the first frame,
    neither every frame. T over `max_frames` is refused (413) rather than silently capped.
    Raises InputError (empty, truncated or corrupt, no video stream, bad frames/fps),
    UnsupportedMediaType (not video, unknown codec) or PayloadTooLarge (too many bytes,
    pixels per frame, frames or seconds).
    """
    height, width = int(size[0]), int(size[1])
    assert height > 0 and width > 0, f"size must be positive (H, W), got {size}"
    if frames is not None and fps is not None:
        raise InputError("give either frames or fps for video sampling, not both")
    if frames is not None and frames <= 0:
        raise InputError(f"frames must be a positive number of frames, got {frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number of frames per second, got {fps}")
    if frames is not None and frames > max_frames:
        raise PayloadTooLarge(f"{frames} frames requested, over the limit of {max_frames} frames")

    check_media_bytes(data, content_type, "video", max_upload_bytes)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        # FFmpeg reports a GIF's size only once a frame is decoded: check the screen it declares first.
        _check_pixels(int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"), max_pixels)
    container = open_container(data, "video")
    with container, ffmpeg_errors("video"):
        if not container.streams.video:
            raise InputError(f"the upload has no video stream (it holds {describe_streams(container)})")
        check_riff_size(data, "video")
        stream = container.streams.video[0]
        require_decoder(stream, "video")
        _check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        claimed = header_duration_s(container, stream)
        if claimed is not None and claimed > max_duration_s:
            raise PayloadTooLarge(
                f"the video is {claimed:.2f} s long according to its header, over the limit of {max_duration_s:g} s"
            )
        times, duration = _timeline(container, stream, max_duration_s)
        check_not_truncated(container, stream, duration, "video")
        source_fps = float(stream.average_rate) if stream.average_rate else 0.0
        if not source_fps and len(times) > 1:
            source_fps = (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0
        targets = _targets(times, duration, frames, fps)
        if len(targets) > max_frames:
            how = f"sampling at {fps:g} fps" if fps is not None else "taking every frame"
            raise PayloadTooLarge(
                f"{how} gives {len(targets)} frames, over the limit of {max_frames} frames; "
                "ask for fewer with frames=N or a lower fps"
            )
    container = open_container(data, "video")  # again from the start: the timeline pass read to the end
    with container, ffmpeg_errors("video"):
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; the decode is the costly part
        pictures, picked_times = _decode_at(container, stream, times[0], targets, (height, width), max_pixels)
    clip = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()  # [T, H, W, 3] -> [T, 3, H, W]
    info = VideoInfo(
        source_fps=source_fps,
        duration_s=duration,
        source_frames=len(times),
        sampled_times_s=picked_times,
    )
    return clip, info


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the video is {width}x{height} = {width * height} pixels per frame, over the limit of {max_pixels} pixels"
        )


MAX_FPS = 1000  # high-speed cameras record up to ~1000 fps; denser timestamps are corrupt


def _timeline(container: av.container.InputContainer, stream: av.VideoStream, max_duration_s: float):
    """Demux only (no decoding): sorted frame times in seconds and the clip duration.

    Stops as soon as a frame lies past `max_duration_s`, whatever the header said.
    """
    assert stream.time_base is not None
    base = float(stream.time_base)
    times: list[float] = []
    last_duration = 0.0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # end-of-stream flush / edit-list dropped frames
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:  # no timestamps at all: pretend a steady rate
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            seconds = len(times) / rate
        else:
            seconds = stamp * base
        times.append(seconds)
        if packet.duration:
            last_duration = packet.duration * base
        if seconds - min(times[0], seconds) > max_duration_s:
            raise PayloadTooLarge(
                f"the video is at least {seconds - times[0]:.2f} s long, over the limit of {max_duration_s:g} s"
            )
    if not times:
        raise InputError("the video is truncated or corrupt: its video stream holds no frames")
    times.sort()  # presentation order (B-frames arrive out of order)
    if not last_duration:
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
        last_duration = 1.0 / rate if rate else (min(gaps) if gaps else 0.0)
    duration = times[-1] - times[0] + last_duration
    if duration > max_duration_s:
        raise PayloadTooLarge(f"the video is {duration:.2f} s long, over the limit of {max_duration_s:g} s")
    span = times[-1] - times[0]
    if span > 0 and len(times) - 1 > MAX_FPS * span:
        # Timestamps packed absurdly close: a corrupt or hostile header, not a camera. (All
        # frames at one instant is left to the sampling: some GIFs say "no delay".)
        raise InputError(
            f"the video's timestamps are corrupt: {len(times)} frames in {span:.6f} s is over {MAX_FPS} frames per second"
        )
    return times, duration


def _targets(times: list[float], duration: float, frames: int | None, fps: float | None) -> list[float]:
    """Instants (absolute seconds, ascending) at which to take the frame on screen."""
    start = times[0]
    if frames is not None:
        return [start + (i + 0.5) * duration / frames for i in range(frames)]
    if fps is not None:
        count = max(1, math.ceil(duration * fps - 1e-9))
        return [start + k / fps for k in range(count)]
    return list(times)


def _decode_at(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    start: float,
    targets: list[float],
    size: tuple[int, int],
    max_pixels: int,
) -> tuple[list[np.ndarray], list[float]]:
    """Decode in order; for each target keep the frame on screen then, as [H, W, 3] uint8."""
    height, width = size
    pictures: list[np.ndarray] = []
    picked: list[float] = []
    previous: tuple[int, float, av.VideoFrame] | None = None
    converted: dict[int, np.ndarray] = {}  # decode index -> picture, so a repeated frame converts once

    def take(entry: tuple[int, float, av.VideoFrame]) -> None:
        key, seconds, frame = entry
        if key not in converted:
            converted.clear()  # only the latest frame can repeat
            _check_pixels(frame.width, frame.height, max_pixels)  # resolution can change mid-stream
            converted[key] = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
        pictures.append(converted[key])
        picked.append(round(seconds - start, 6))

    step = 0
    for index, frame in enumerate(container.decode(stream)):
        seconds = frame.time if frame.time is not None else start + index / float(stream.average_rate or 25)
        entry = (index, seconds, frame)
        while step < len(targets) and targets[step] < seconds - 1e-9:
            take(previous or entry)  # a target before the first frame gets the first frame
            step += 1
        if step == len(targets):
            break
        previous = entry
    while step < len(targets) and previous is not None:  # targets after the last frame
        take(previous)
        step += 1
    if not pictures:
        raise InputError("the video is truncated or corrupt: no frame could be decoded")
    if len(pictures) < len(targets):
        raise InputError(
            f"the video is truncated or corrupt: only {len(pictures)} of {len(targets)} sampled frames decoded"
        )
    return pictures, picked
