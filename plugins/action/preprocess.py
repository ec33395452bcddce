"""Request bytes -> the action model's input clip, through the shared video decoder, or from
raw frames (the Open Inference Protocol's FRAMES UINT8 [T, H, W, 3] input).

Frame sampling is decided in one place, `sampling`, from the request's own parameters when
the server passes them (`fps` or `frames`) and from the model's training pace otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mmserve.plugins.action.model import ActionRecognizer
from mmserve.plugins.errors import InputError, PayloadTooLarge
from mmserve.plugins.media import VideoInfo, decode_video
from mmserve.plugins.task import InputLimits

# Raw frames, as a NumPy .npy array uint8 [T, H, W, 3] (read with allow_pickle=False): what
# the v2 FRAMES input hands to preprocess. Not an upload type of POST /v1/action.
FRAMES_CONTENT_TYPE = "application/x-mmserve-frames"
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


def frames_to_bytes(frames: np.ndarray) -> bytes:
    """uint8 frames [T, H, W, 3] -> the FRAMES_CONTENT_TYPE bytes `decode_frames` reads."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise InputError(f"FRAMES must be uint8 [T, H, W, 3] per clip with T, H, W >= 1, got {frames.dtype} {list(frames.shape)}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
    return buffer.getvalue()


def decode_frames(
    data: bytes, model: ActionRecognizer, limits: InputLimits, params: Mapping[str, Any] | None = None
) -> tuple[torch.Tensor, list[float]]:
    """Raw frames (FRAMES_CONTENT_TYPE) -> (uint8 frames [T, 3, H, W] at the model's frame size, frame times).

    The frames are the clip as sent: `frames=N` keeps N of them evenly spread, `fps=R` says
    they were taken R per second (for the times in the answer; default: the model's pace).
    Raises InputError (not such an array) or PayloadTooLarge (frames or pixels per frame).
    """
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"raw frames are not a NumPy uint8 [T, H, W, 3] array: {error}") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise InputError(f"raw frames must be uint8 [T, H, W, 3] with T, H, W >= 1, got {array.dtype} {list(array.shape)}")
    count, height, width = (int(v) for v in array.shape[:3])
    if height * width > limits.max_pixels:
        raise PayloadTooLarge(f"frames are {width}x{height} = {height * width} pixels, over the limit of {limits.max_pixels} pixels per frame")
    params = params or {}
    if params.get("frames") is not None and params.get("fps") is not None:
        raise InputError("give either frames or fps, not both")
    wanted = params.get("frames")
    if wanted is not None:
        wanted = int(wanted)
        if wanted < 1:
            raise InputError(f"frames must be a positive number of frames, got {wanted}")
        # the middle frame of each of `wanted` equal slices, as decode_video samples videos
        picked = [min(int((k + 0.5) * count / wanted), count - 1) for k in range(wanted)]
    else:
        picked = list(range(count))
    if len(picked) > limits.max_frames:
        raise PayloadTooLarge(f"{len(picked)} frames, over the limit of {limits.max_frames} frames; send fewer or ask for frames=N")
    rate = float(params.get("fps") or model.config.encoder.default_fps)
    if rate <= 0:
        raise InputError(f"fps must be positive, got {rate}")
    import av

    size_h, size_w = model.frame_size
    clip = np.stack([  # the same resampling as decoded video frames get
        av.VideoFrame.from_ndarray(np.ascontiguousarray(array[k]), format="rgb24")
        .reformat(width=size_w, height=size_h, format="rgb24").to_ndarray()
        for k in picked
    ])  # fmt: skip
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
    return frames, [round(k / rate, 6) for k in picked]
