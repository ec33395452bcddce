"""Request bytes -> the captioner's input tensor, with every check a client can fail named.

Order matters: the cheap checks (empty body, upload size, declared and sniffed type, pixel
count from the header) run before the pixels are decoded.
"""

from __future__ import annotations

import torch

from mmserve.plugins.captioning.model import Captioner
from mmserve.plugins.media import check_image_bytes, decode_image, fit_to_canvas, image_to_tensor
from mmserve.plugins.task import InputLimits

CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")


def image_bytes_to_tensor(data: bytes, content_type: str | None, model: Captioner, limits: InputLimits) -> torch.Tensor:
    """PNG / JPEG / WebP bytes -> normalised tensor [3, H, W] at the model's input size, the
    picture's aspect ratio kept.

    Raises InputError (empty, truncated or corrupt), UnsupportedMediaType (other types) or
    PayloadTooLarge (too many bytes or pixels).
    """
    check_image_bytes(data, content_type, CONTENT_TYPES, limits.max_upload_bytes)
    image = decode_image(data, limits.max_pixels)  # RGB
    enc = model.config.encoder
    # Aspect kept: plain margins trimmed toward the model's shape, then letterboxed (media.letterbox).
    return image_to_tensor(fit_to_canvas(image, enc.image_size), enc.image_size, enc.mean, enc.std)  # [3, H, W]
