"""Captioning away from the training canvas: 2x scenes on a square canvas, training augmentation,
fine-tuning from an artifact under a time budget."""

from __future__ import annotations

import numpy as np
import torch

from mmserve.plugins.captioning.augment import augmented_pixels, render_scene_scaled, square_2x
from mmserve.plugins.captioning.data import (
    CANVAS_HEIGHT,
    CANVAS_WIDTH,
    DigitScenes,
    render_scene,
    sample_scene,
    scene_vocabulary,
)
from mmserve.plugins.captioning.evaluate import evaluate_square_2x
from mmserve.plugins.captioning.task import CaptioningTask
from mmserve.plugins.media import fit_to_canvas, image_to_tensor
from mmserve.plugins.task import TrainOptions
from mmserve.plugins.tracking import MemoryRunLogger
from tests.unit.captioning.test_model import TINY


def _ink_box(pixels: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the drawn digits (bright pixels)."""
    ink = pixels.max(axis=2) > 100
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_a_2x_scene_on_a_square_canvas_comes_back_to_the_training_scale():
    for index in range(5):
        scene = sample_scene("test", index)
        square = square_2x(scene)
        assert square.shape == (2 * CANVAS_WIDTH, 2 * CANVAS_WIDTH, 3)
        fitted = fit_to_canvas(square, (CANVAS_HEIGHT, CANVAS_WIDTH))
        stretched = (image_to_tensor(square, (CANVAS_HEIGHT, CANVAS_WIDTH), (0, 0, 0), (1, 1, 1)) * 255).byte()
        plain = _ink_box(render_scene(scene))
        # Trimmed and letterboxed, the digits have their training size; stretched, they are
        # squashed to under half their height.
        height, width = _ink_box(fitted)
        assert abs(height - plain[0]) <= 2 and abs(width - plain[1]) <= 2, (index, (height, width), plain)
        squashed = _ink_box(stretched.permute(1, 2, 0).numpy())
        assert squashed[0] <= plain[0] * 0.6, (index, squashed, plain)


def test_scaled_rendering_at_1x_matches_the_canvas_renderer():
    scene = sample_scene("train", 3)
    assert (render_scene_scaled(scene, 1.0) == render_scene(scene)).all()


def test_augmentation_is_a_share_of_scenes_and_reproducible():
    vocab = scene_vocabulary()
    plain = DigitScenes("train", 40, vocab)
    augmented = DigitScenes("train", 40, vocab, augment=0.5)
    changed = [i for i in range(40) if not torch.equal(plain.image(i), augmented.image(i))]
    assert 8 <= len(changed) <= 32, len(changed)  # about half
    assert all(augmented.image(i).shape == (3, CANVAS_HEIGHT, CANVAS_WIDTH) for i in changed)
    assert torch.equal(augmented.image(changed[0]), DigitScenes("train", 40, vocab, augment=0.5).image(changed[0]))
    pictures = [augmented_pixels(sample_scene("train", i), np.random.default_rng(i)) for i in range(20)]
    assert len({p.shape for p in pictures}) > 10  # sizes and canvas shapes vary


def test_fine_tuning_from_an_artifact_with_augmentation_and_the_2x_evaluation(tmp_path):
    first = CaptioningTask().train(TrainOptions(output_dir=tmp_path / "a", epochs=1, batch_size=8, max_steps=2,
                                                extra={**TINY, "test_scenes": 0}), MemoryRunLogger())  # fmt: skip
    extra = {**TINY, "test_scenes": 0, "init_from": str(first.artifact_dir), "augment": 0.5,
             "time_budget_minutes": 0.0001}  # fmt: skip
    second = CaptioningTask().train(TrainOptions(output_dir=tmp_path / "b", epochs=3, batch_size=8, max_steps=50,
                                                 extra=extra), MemoryRunLogger())  # fmt: skip
    assert second.params["init_from"] == str(first.artifact_dir)
    model = CaptioningTask().load_model(second.artifact_dir, torch.device("cpu"))
    figures = evaluate_square_2x(model, test_scenes=4)
    assert set(figures) == {"square2x_digit_accuracy", "square2x_stretched_digit_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in figures.values())
