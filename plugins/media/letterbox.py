"""Fit an image of any size and shape to a model's fixed input size without distorting it.

Stretching a square photo of a wide scene onto a wide canvas squashes every shape in it;
a model then reads squashed digits as other digits. `fit_to_canvas`:

1. estimates the background colour (the median of the border pixels);
2. trims plain-background margins, but only along the axis that is too long for the target's
   aspect ratio and only until that ratio is reached, keeping every row / column whose pixels
   differ from the background (the content) and centring the kept window on it;
3. letterboxes what is left: one scale for both axes, centred, padded with the background.

An image already of the target's aspect ratio is only resized (one scale), so inputs shaped
like the training data reach the model exactly as they did in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# A pixel differs from the background when one channel is this far from it (out of 255);
# well above sensor / compression noise, well below any drawn content.
CONTENT_THRESHOLD = 40


def border_colour(array: np.ndarray) -> np.ndarray:
    """Median colour of the outermost rows and columns: uint8 [3]."""
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])  # [2W + 2H, 3]
    return np.median(border, axis=0).astype(np.uint8)


def _window(mask: np.ndarray, length: int) -> tuple[int, int]:
    """[start, stop) of `length` (at least the content's span) centred on the True entries."""
    total = mask.shape[0]
    hits = np.flatnonzero(mask)
    if hits.size == 0:
        first, last = 0, total - 1
    else:
        first, last = int(hits[0]), int(hits[-1])
    length = min(total, max(length, last - first + 1))
    start = (first + last + 1 - length) // 2
    start = min(max(start, 0), total - length)
    return start, start + length


def trim_to_aspect(array: np.ndarray, aspect: float, background: np.ndarray) -> np.ndarray:
    """Crop plain-background margins of a uint8 [H, W, 3] image toward width / height = `aspect`."""
    height, width = array.shape[:2]
    content = (np.abs(array.astype(np.int16) - background.astype(np.int16)) > CONTENT_THRESHOLD).any(axis=2)  # [H, W]
    if width / height < aspect:  # too tall: trim rows
        start, stop = _window(content.any(axis=1), round(width / aspect))
        return array[start:stop]
    if width / height > aspect:  # too wide: trim columns
        start, stop = _window(content.any(axis=0), round(height * aspect))
        return array[:, start:stop]
    return array


def letterbox(array: np.ndarray, size: Sequence[int], background: np.ndarray) -> np.ndarray:
    """Scale a uint8 [h, w, 3] image by one factor to fit (H, W) and pad it, centred: uint8 [H, W, 3]."""
    target_h, target_w = int(size[0]), int(size[1])
    height, width = array.shape[:2]
    scale = min(target_h / height, target_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) != (height, width):
        array = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.empty((target_h, target_w, 3), np.uint8)
    canvas[:] = background
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = array
    return canvas


def fit_to_canvas(image: Image.Image | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """RGB image (PIL or uint8 [H, W, 3]) -> uint8 [H', W', 3] of `size` (H', W'), aspect kept."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8, (
        f"expected a uint8 array [H, W, 3], got {array.dtype} {array.shape}"
    )
    height, width = int(size[0]), int(size[1])
    if array.shape[:2] == (height, width):
        return array
    background = border_colour(array)
    return letterbox(trim_to_aspect(array, width / height, background), size, background)
