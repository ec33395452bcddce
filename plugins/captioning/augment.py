"""Digit scenes away from the training canvas: drawn larger or smaller, on canvases of other
shapes and backgrounds. Training augments with them (`augmented_pixels`); evaluation reads
scenes drawn at twice the size on a square canvas (`square_2x`), the case stretching failed.
"""

from __future__ import annotations

import numpy as np

from mmserve.plugins.captioning.data import CANVAS_HEIGHT, CANVAS_WIDTH, PALETTE, Scene, _glyph


def render_scene_scaled(scene: Scene, scale: float) -> np.ndarray:
    """A scene drawn at `scale` times its size (glyphs resampled from the 8x8 originals, not
    the finished picture enlarged): uint8 [round(48 s), round(112 s), 3]."""
    height, width = round(CANVAS_HEIGHT * scale), round(CANVAS_WIDTH * scale)
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, 4.0, (height, width, 1))
    canvas = np.full((height, width, 3), float(scene.background), np.float32) + noise
    for d in scene.digits:
        size = max(2, round(d.size * scale))
        y, x = min(round(d.y * scale), height - size), min(round(d.x * scale), width - size)
        alpha = _glyph(d.sample, size)[..., None]  # [s, s, 1]
        region = canvas[y : y + size, x : x + size]
        region[:] = region * (1.0 - alpha) + np.asarray(PALETTE[d.colour], np.float32) * alpha
    return np.clip(canvas, 0, 255).astype(np.uint8)


def place_on_canvas(
    pixels: np.ndarray, height: int, width: int, top: int, left: int, level: float, rng: np.random.Generator
) -> np.ndarray:
    """`pixels` [h, w, 3] pasted at (top, left) on a noisy canvas of grey `level`: uint8 [height, width, 3]."""
    h, w = pixels.shape[:2]
    assert height >= h and width >= w, f"a {h}x{w} picture does not fit a {height}x{width} canvas"
    canvas = np.full((height, width, 3), level, np.float32) + rng.normal(0.0, 4.0, (height, width, 1))
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    canvas[top : top + h, left : left + w] = pixels
    return canvas


def square_2x(scene: Scene) -> np.ndarray:
    """The scene drawn at twice its size, centred on a square canvas of its background:
    uint8 [224, 224, 3]."""
    pixels = render_scene_scaled(scene, 2.0)  # [96, 224, 3]
    side = pixels.shape[1]
    rng = np.random.default_rng(scene.noise_seed + 1)
    return place_on_canvas(pixels, side, side, (side - pixels.shape[0]) // 2, 0, scene.background, rng)


def augmented_pixels(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One training picture of `scene` at another size, canvas shape and background.

    Scale 0.75-2.5x; the canvas is 1-3x the drawing's height and 1-1.6x its width (square and
    tall canvases included), the drawing anywhere on it; the margin is the scene's own grey
    (serving trims it) or, one time in three, another dark grey (serving letterboxes it,
    so the digits reach the model smaller than in training).
    """
    pixels = render_scene_scaled(scene, float(rng.uniform(0.75, 2.5)))
    h, w = pixels.shape[:2]
    height, width = round(h * rng.uniform(1.0, 3.0)), round(w * rng.uniform(1.0, 1.6))
    same = rng.random() >= 1 / 3
    level = float(scene.background) if same else float(rng.integers(0, 60))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return place_on_canvas(pixels, height, width, top, left, level, rng)
