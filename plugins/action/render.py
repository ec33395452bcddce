"""Draw a `ClipSpec` as frames: every object of every frame in one batched `grid_sample`.

Each object (actor or distractor) in each frame is its 8x8 handwritten digit under an affine
map (centre, clockwise angle, side in pixels); objects are composited with `max`, then a
fixed background texture, per-frame noise and the camera jitter (a per-frame offset of every
object) are added. Vectorised, a 24-frame clip renders in about a millisecond, so training
draws fresh clips every epoch instead of storing them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from mmserve.plugins.action.clips import FRAME_SIZE, ClipSpec, digit_bank, distractor_path


def affine_thetas(
    cx: torch.Tensor, cy: torch.Tensor, angle_deg: torch.Tensor, side: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Sampling maps [N, 2, 3] for `F.affine_grid`: output pixel -> digit coordinates in [-1, 1].

    With y pointing down, a positive angle turns the digit clockwise on screen; the inverse
    rotation maps each output pixel back onto the upright 8x8 source.
    """
    height, width = size
    half = (side / 2).clamp_min(1e-3)
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # pixel p = ((xn + 1) W/2, (yn + 1) H/2); source u = R(-theta) (p - c) / half
    ax, ay = width / 2 / half, height / 2 / half
    bx, by = (width / 2 - cx) / half, (height / 2 - cy) / half
    row0 = torch.stack([cos * ax, sin * ay, cos * bx + sin * by], dim=1)
    row1 = torch.stack([-sin * ax, cos * ay, -sin * bx + cos * by], dim=1)
    return torch.stack([row0, row1], dim=1)


@functools.cache
def _base_grid(height: int, width: int) -> torch.Tensor:
    """Output pixel centres in normalised coordinates, [H*W, 3] rows of (xn, yn, 1)."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).view(-1, 3)


def draw_objects(
    glyphs: torch.Tensor, thetas: torch.Tensor, intensity: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """glyphs [N, 1, 8, 8], thetas [N, 2, 3], intensity [N] -> layers [N, H, W] in 0..1."""
    grid = (_base_grid(*size) @ thetas.transpose(1, 2)).view(len(glyphs), *size, 2)  # F.affine_grid, but faster
    layers = F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return layers[:, 0] * intensity.view(-1, 1, 1)


def shape_inverse(shear: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    """[N, 2, 2] inverse of the glyph's own distortion S = [[sqrt(a), shear], [0, 1/sqrt(a)]]
    (area kept), applied before rotation: a drawn point is c + R(angle) S g * side / 2."""
    root = aspect.sqrt()
    row0 = torch.stack([1 / root, -shear], dim=1)
    row1 = torch.stack([torch.zeros_like(root), root], dim=1)
    return torch.stack([row0, row1], dim=1)


def render_clip(spec: ClipSpec, size: tuple[int, int] = FRAME_SIZE) -> torch.Tensor:
    """The clip's frames as uint8 [T, 3, H, W] (grey digits, so the three channels are equal)."""
    images, _ = digit_bank()
    frames_n = spec.num_frames
    jitter = torch.tensor(spec.jitter, dtype=torch.float32)  # [T, 2]
    # (sample, cx, cy, angle, side, intensity, shear, aspect, stroke gamma)
    rows: list[tuple[int, float, float, float, float, float, float, float, float]] = []
    for index, actor in enumerate(spec.actors):
        for s in spec.actor_states(index):
            rows.append((actor.sample, s.cx, s.cy, s.angle, actor.size * s.scale, actor.intensity * s.alpha,
                         actor.shear, actor.aspect, actor.stroke_gamma))  # fmt: skip
    for d in spec.distractors:
        rows.extend((d.sample, x, y, 0.0, d.size, d.intensity, 0.0, 1.0, 1.0) for x, y in distractor_path(d, frames_n, size))
    objects = len(rows) // frames_n
    table = torch.tensor([r[1:] for r in rows], dtype=torch.float32)  # [O*T, 8], object-major
    shift = jitter.repeat(objects, 1)  # the camera moves every object alike
    thetas = affine_thetas(table[:, 0] + shift[:, 0], table[:, 1] + shift[:, 1], table[:, 2], table[:, 3], size)
    glyphs = torch.from_numpy(images[[r[0] for r in rows]]).unsqueeze(1)  # [O*T, 1, 8, 8]
    if bool((table[:, 5:] != torch.tensor([0.0, 1.0, 1.0])).any()):  # augmented handwriting
        thetas = shape_inverse(table[:, 5], table[:, 6]) @ thetas
        glyphs = glyphs ** table[:, 7].view(-1, 1, 1, 1)
    layers = draw_objects(glyphs, thetas, table[:, 4], size).view(objects, frames_n, *size)
    scene = layers.amax(dim=0)  # [T, H, W]
    gen = torch.Generator().manual_seed(spec.noise_seed)
    # A smooth background texture that stays put (the scene) plus fresh sensor noise per frame.
    texture = F.interpolate(torch.rand(1, 1, 4, 6, generator=gen), size=size, mode="bilinear", align_corners=False)[0, 0]
    background = spec.background * (0.5 + texture)
    noise = torch.randn(frames_n, *size, generator=gen) * spec.noise_std
    pixels = (torch.maximum(scene, background) + noise).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def centre_of_mass(layer: torch.Tensor) -> tuple[float, float]:
    """(x, y) of a [H, W] intensity layer's centre of mass, in pixels (tests, diagnostics)."""
    total = layer.sum().clamp_min(1e-6)
    ys = torch.arange(layer.shape[0], dtype=layer.dtype) + 0.5
    xs = torch.arange(layer.shape[1], dtype=layer.dtype) + 0.5
    return float((layer.sum(0) * xs).sum() / total), float((layer.sum(1) * ys).sum() / total)


def render_actor(spec: ClipSpec, actor: int, size: tuple[int, int] = FRAME_SIZE) -> torch.Tensor:
    """Only one actor, no jitter, noise or background: [T, H, W] in 0..1 (tests, diagnostics)."""
    images, _ = digit_bank()
    states = spec.actor_states(actor)
    a = spec.actors[actor]
    table = torch.tensor([(s.cx, s.cy, s.angle, a.size * s.scale, a.intensity * s.alpha) for s in states])
    thetas = affine_thetas(table[:, 0], table[:, 1], table[:, 2], table[:, 3], size)
    thetas = shape_inverse(torch.full((len(states),), a.shear), torch.full((len(states),), a.aspect)) @ thetas
    glyphs = torch.from_numpy(np.repeat(images[a.sample][None, None], len(states), axis=0)) ** a.stroke_gamma
    return draw_objects(glyphs, thetas, table[:, 4], size)


def orientation(layer: torch.Tensor) -> float:
    """Principal-axis angle of a [H, W] layer in degrees (clockwise on screen), for tests."""
    total = layer.sum().clamp_min(1e-6)
    cx, cy = centre_of_mass(layer)
    ys = (torch.arange(layer.shape[0], dtype=layer.dtype) + 0.5 - cy).view(-1, 1)
    xs = (torch.arange(layer.shape[1], dtype=layer.dtype) + 0.5 - cx).view(1, -1)
    mxx, myy, mxy = (layer * xs * xs).sum() / total, (layer * ys * ys).sum() / total, (layer * xs * ys).sum() / total
    return math.degrees(0.5 * math.atan2(float(2 * mxy), float(mxx - myy)))
