"""Request bytes -> the action model's input clip, through the shared video decoder.

Frame sampling is decided in one place, `sampling`, from the request's own parameters when
the server passes them (`fps` or `frames`) and from the model's training pace otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmserve.plugins.action.model import ActionRecognizer
from mmserve.plugins.errors import InputError
from mmserve.plugins.media import VideoInfo, decode_video
from mmserve.plugins.task import InputLimits

CONTENT_TYPES = ("video/mp4", "video/webm", "video/x-msvideo", "video/avi", "video/quicktime", "image/gif")


def sampling(model: ActionRecognizer, params: Mapping[str, Any] | None = None) -> tuple[int | None, float | None]:
    """(frames, fps) for `decode_video`: the request's `frames` or `fps`, else the model's default fps.

    The model was trained on clips sampled at `default_fps` (8 frames per second, 16-24
    frames), so that pace is the default; `frames=N` spreads N frames over the whole clip.
    """
    params = params or {}
    frames, fps = params.get("frames"), params.get("fps")
    if frames is not None and fps is not None:
        raise InputError("give either frames or fps for video sampling, not both")
    try:
        frames = int(frames) if frames is not None else None
        fps = float(fps) if fps is not None else None
    except (TypeError, ValueError) as error:
        raise InputError(f"frames must be an integer and fps a number, got frames={frames!r}, fps={fps!r}") from error
    if frames is None and fps is None:
        fps = model.config.encoder.default_fps
    return frames, fps


def video_bytes_to_clip(
    data: bytes,
    content_type: str | None,
    model: ActionRecognizer,
    limits: InputLimits,
    params: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The clip alone; see `decode_clip`."""
    return decode_clip(data, content_type, model, limits, params)[0]


def decode_clip(
    data: bytes,
    content_type: str | None,
    model: ActionRecognizer,
    limits: InputLimits,
    params: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, VideoInfo]:
    """MP4 / WebM / AVI / GIF bytes -> uint8 frames [T, 3, H, W] at the model's frame size.

    Raises InputError (empty, corrupt, truncated, no video stream), UnsupportedMediaType or
    PayloadTooLarge (bytes, pixels per frame, frames, duration), each naming the limit.
    """
    frames, fps = sampling(model, params)
    clip, info = decode_video(
        data,
        content_type,
        frames=frames,
        fps=fps,
        size=model.frame_size,
        max_upload_bytes=limits.max_upload_bytes,
        max_frames=limits.max_frames,
        max_pixels=limits.max_pixels,
        max_duration_s=limits.max_duration_s,
    )
    return clip, info
