"""Fitting pictures of any shape to a model's input size keeps their aspect ratio."""

from __future__ import annotations

import numpy as np

from mmserve.plugins.media import fit_to_canvas
from mmserve.plugins.media.letterbox import letterbox, trim_to_aspect

SIZE = (48, 112)


def _canvas(height: int, width: int, level: int = 10) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


def _box(array: np.ndarray, level: int = 10) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pixels brighter than the background, inclusive."""
    rows = np.flatnonzero((array > level + 40).any(axis=(1, 2)))
    cols = np.flatnonzero((array > level + 40).any(axis=(0, 2)))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_a_picture_of_the_input_size_passes_unchanged():
    picture = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    assert (fit_to_canvas(picture, SIZE) == picture).all()


def test_a_square_stays_square_on_a_wide_canvas():
    picture = _canvas(200, 200)
    picture[60:140, 60:140] = 250  # an 80 x 80 square, margins of plain background
    top, bottom, left, right = _box(fit_to_canvas(picture, SIZE))
    height, width = bottom - top + 1, right - left + 1
    assert abs(height - width) <= 1, (height, width)  # stretching would make it 2.3x wider than tall


def test_plain_margins_are_trimmed_only_toward_the_aspect_ratio():
    # A wide drawing (its own aspect 112:48) centred on a square of plain background comes
    # out at the drawing's own scale: the margins above and below are trimmed, not kept.
    drawing = _canvas(96, 224)
    drawing[20:76, 30:200] = 250
    square = _canvas(224, 224)
    square[64:160] = drawing
    fitted = fit_to_canvas(square, SIZE)
    expected = fit_to_canvas(drawing, SIZE)
    assert np.abs(fitted.astype(int) - expected.astype(int)).max() <= 2


def test_content_is_never_cropped():
    picture = _canvas(300, 100)
    for top in (0, 145, 290):  # marks on the top and bottom rows and between
        picture[top : top + 10, 40:60] = 250
    trimmed = trim_to_aspect(picture, 112 / 48, np.array([10, 10, 10], np.uint8))
    assert trimmed.shape == picture.shape  # content spans the height: nothing to trim
    fitted = fit_to_canvas(picture, SIZE)
    assert fitted.shape == (*SIZE, 3) and (fitted > 50).any()


def test_letterbox_pads_with_the_background_centred():
    picture = _canvas(48, 48, level=200)
    boxed = letterbox(picture, SIZE, np.array([5, 5, 5], np.uint8))
    assert (boxed[:, 32:80] == 200).all() and (boxed[:, :32] == 5).all() and (boxed[:, 80:] == 5).all()
