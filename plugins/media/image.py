"""Shared image decoding and validation for plugins that take images (or frames) as input.

Everything here works on raw request bytes and raises the plugin errors (`InputError` and
its subclasses), so the server can map each failure to a clear 4xx. The checks run cheapest
first: type sniffing and size limits happen before any pixel is decoded, so a decompression
bomb or a huge upload never costs more than reading its header.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType

# Content types a client may send without naming a real image type; we then trust the bytes.
GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")

# Magic-number prefixes: (offset, bytes, MIME type). Unsupported types are listed too, so the
# error can say "received image/gif" instead of just "unknown".
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" + 4-byte length
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (4, b"ftyp", "video/mp4 or image/heic"),
    (0, b"%PDF", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"<svg", "image/svg+xml"),
    (0, b"<?xml", "application/xml"),
)


def sniff_media_type(data: bytes) -> str | None:
    """The MIME type the leading bytes announce, or None when they match no known signature."""
    for offset, magic, mime in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return mime
    return None


def describe_bytes(data: bytes) -> str:
    """A short human description of what an upload looks like, for error messages."""
    sniffed = sniff_media_type(data)
    if sniffed is not None:
        return sniffed
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised binary data starting {data[:8].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        return f"text/plain data starting {text[:24]!r}"
    return f"unrecognised data starting {data[:8].hex(' ')}"


# Non-standard names clients send for standard types.
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


def _base_type(content_type: str | None) -> str:
    # "image/png; charset=binary" -> "image/png"
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def check_image_bytes(
    data: bytes, content_type: str | None, accepted: Sequence[str], max_upload_bytes: int
) -> str:
    """Validate an upload before decoding it; return its sniffed MIME type.

    Raises InputError (empty), PayloadTooLarge (over `max_upload_bytes`) or
    UnsupportedMediaType (declared or actual type not in `accepted`).
    """
    if not data:
        raise InputError("the request body is empty: expected an image (PNG, JPEG or WebP)")
    if len(data) > max_upload_bytes:
        raise PayloadTooLarge(f"the upload is {len(data)} bytes, over the limit of {max_upload_bytes} bytes")
    declared = _base_type(content_type)
    if declared not in GENERIC_CONTENT_TYPES and declared not in accepted:
        raise UnsupportedMediaType(f"content type {declared!r} is not supported; send one of {', '.join(accepted)}")
    sniffed = sniff_media_type(data)
    if sniffed not in accepted:
        raise UnsupportedMediaType(
            f"the upload is {describe_bytes(data)}, not a supported image; send one of {', '.join(accepted)}"
        )
    return sniffed


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode already-checked image bytes to an RGB PIL image.

    The pixel limit is checked on the header (PIL's `open` is lazy) before the pixels are
    decoded, so an image whose header claims 100k x 100k pixels is refused without allocating.
    """
    with warnings.catch_warnings():
        # We enforce our own limit below; PIL's bomb warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise PayloadTooLarge(f"the image has too many pixels: {error}") from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InputError(f"the image is truncated or corrupt: cannot read its header ({error})") from error
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputError(f"the image is truncated or corrupt: it claims a size of {width}x{height}")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels"
            )
        try:
            image.load()  # the real decode: raises on truncated or corrupt pixel data
            return image.convert("RGB")
        except Image.DecompressionBombError as error:
            raise PayloadTooLarge(f"the image has too many pixels: {error}") from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise InputError(f"the image is truncated or corrupt: {error}") from error


def image_to_tensor(
    image: Image.Image | np.ndarray,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """RGB image (PIL or uint8 array [H, W, 3]) -> normalised float tensor [3, H, W] of `size` (H, W).

    Training data and requests both go through this function, so a served model sees exactly
    the preprocessing it was trained with.
    """
    height, width = int(size[0]), int(size[1])
    if isinstance(image, np.ndarray):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (
            f"expected a uint8 array [H, W, 3], got {image.dtype} {image.shape}"
        )
        array = image
        if array.shape[:2] != (height, width):
            array = np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
    else:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        array = np.asarray(image)
    if not array.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants writable memory
        array = array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)  # [3, H, W]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t
