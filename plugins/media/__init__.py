"""Shared media decoding with limits: images, audio and video from raw request bytes.

Every helper raises the plugin errors (`InputError` 400, `UnsupportedMediaType` 415,
`PayloadTooLarge` 413), so the server maps each failure to a clear 4xx. Plugins import from
here, never from the submodules: `from mmserve.plugins.media import decode_audio`.
"""

from mmserve.plugins.media.audio import audio_duration_s, decode_audio
from mmserve.plugins.media.image import (
    GENERIC_CONTENT_TYPES,
    check_image_bytes,
    decode_image,
    describe_bytes,
    image_to_tensor,
    sniff_media_type,
)
from mmserve.plugins.media.letterbox import fit_to_canvas
from mmserve.plugins.media.video import VideoInfo, decode_video

__all__ = [
    "GENERIC_CONTENT_TYPES",
    "VideoInfo",
    "audio_duration_s",
    "check_image_bytes",
    "decode_audio",
    "decode_image",
    "decode_video",
    "describe_bytes",
    "fit_to_canvas",
    "image_to_tensor",
    "sniff_media_type",
]
