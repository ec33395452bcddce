"""Digit scenes and the COCO-captions loader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmserve.plugins.captioning import data
from mmserve.plugins.captioning.data import (
    BAND_CENTRES,
    CocoCaptions,
    DigitScenes,
    collate_captions,
    digit_words,
    make_example,
    render_scene,
    sample_scene,
    scene_vocabulary,
    split_samples,
)

FIXTURE = Path(__file__).parent / "fixtures" / "coco"


@pytest.mark.parametrize("split", data.SPLITS)
def test_every_reference_names_the_digits_left_to_right(split):
    for index in range(300):
        scene = sample_scene(split, index, seed=3)
        xs = [d.x for d in scene.digits]
        assert 1 <= len(scene.digits) <= 4
        # Left-to-right order with a gap: boxes never overlap horizontally.
        for left, right in zip(scene.digits, scene.digits[1:]):
            assert left.x + left.size + data.MIN_GAP <= right.x, xs
        assert all(d.x >= 0 and d.x + d.size <= data.CANVAS_WIDTH for d in scene.digits)
        assert all(d.y >= 0 and d.y + d.size <= data.CANVAS_HEIGHT for d in scene.digits)
        for ref in scene.references():
            assert digit_words(ref) == scene.labels, ref
            for d in scene.digits:
                assert d.colour in ref.split()


def test_relations_are_unambiguous_by_construction():
    gaps = {"same": [], "up": [], "down": []}
    for index in range(500):
        scene = sample_scene("train", index, seed=1)
        for relation, a, b in zip(scene.relations, scene.digits, scene.digits[1:]):
            gaps[relation].append((b.y + b.size / 2) - (a.y + a.size / 2))  # > 0: b lower than a
    assert all(gaps.values()), "every relation should occur"
    band_gap = BAND_CENTRES[1] - BAND_CENTRES[0]
    assert max(abs(g) for g in gaps["same"]) < band_gap / 2 < min(g for g in gaps["up"])
    assert max(g for g in gaps["down"]) < -band_gap / 2
    scene = next(s for s in (sample_scene("train", i) for i in range(100)) if "up" in s.relations)
    assert " above " in scene.references()[0]


def test_references_differ_and_one_is_used_for_training():
    scene = sample_scene("test", 5)
    refs = scene.references()
    assert len(refs) == 3 and len(set(refs)) == 3
    assert scene.train_template in range(3)
    used = {sample_scene("train", i).train_template for i in range(200)}
    assert used == {0, 1, 2}


def test_splits_use_disjoint_handwriting():
    train, val, test = (set(split_samples(s).tolist()) for s in data.SPLITS)
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == len(data.digit_bank()[1]) == 1797
    assert len(test) > 300
    used = {d.sample for i in range(400) for d in sample_scene("test", i, seed=7).digits}
    assert used <= test


def test_scenes_are_deterministic_by_seed():
    a = render_scene(sample_scene("train", 11, seed=5, epoch=2))
    b = render_scene(sample_scene("train", 11, seed=5, epoch=2))
    assert a.dtype == np.uint8 and a.shape == (data.CANVAS_HEIGHT, data.CANVAS_WIDTH, 3)
    np.testing.assert_array_equal(a, b)
    assert sample_scene("train", 11, seed=6) != sample_scene("train", 11, seed=5)
    assert sample_scene("train", 11, seed=5, epoch=0) != sample_scene("train", 11, seed=5, epoch=1)


def test_example_is_a_png_with_references():
    example = make_example(3)
    image = Image.open(io.BytesIO(example.png))
    assert image.format == "PNG" and image.size == (data.CANVAS_WIDTH, data.CANVAS_HEIGHT)
    assert digit_words(example.references[0]) == example.labels
    assert make_example(3).png == example.png


def test_dataset_items_and_collate():
    vocab = scene_vocabulary()
    dataset = DigitScenes("val", 10, vocab, seed=2)
    image, ids = dataset[0]
    assert image.shape == (3, data.CANVAS_HEIGHT, data.CANVAS_WIDTH) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id and vocab.unk_id not in ids.tolist()
    images, captions = collate_captions([dataset[i] for i in range(4)], vocab.pad_id)
    assert images.shape == (4, 3, data.CANVAS_HEIGHT, data.CANVAS_WIDTH)
    assert captions.shape[0] == 4 and (captions == vocab.pad_id).any(dim=1).sum() >= 1


def test_coco_loader_reads_the_fixture():
    dataset = CocoCaptions(FIXTURE / "captions.json", FIXTURE / "images", image_size=(16, 20))
    assert len(dataset) == 3
    refs = dataset.references()
    assert refs[1] == ["a red square .", "a plain red image"]
    assert refs[2] == ["a blue square with a white dot ."]
    image, ids = dataset[0]
    assert image.shape == (3, 16, 20)
    assert dataset.vocab.decode(ids.tolist()) == ["a", "red", "square", "."]
    # The red image stays red after normalisation: R channel above G and B.
    assert image[0].mean() > image[1].mean() and image[0].mean() > image[2].mean()
    images, captions = collate_captions([dataset[i] for i in range(3)], dataset.vocab.pad_id)
    assert images.shape == (3, 3, 16, 20) and captions.shape == (3, 10)


def test_coco_loader_rejects_unknown_image_ids(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [], "annotations": [{"image_id": 9, "caption": "x"}]}')
    with pytest.raises(AssertionError, match="unknown image id 9"):
        CocoCaptions(tmp_path / "bad.json", tmp_path)


def test_command_line_writes_a_scene_and_prints_references(tmp_path, capsys):
    out = tmp_path / "scene.png"
    assert data.main(["--split", "test", "--index", "7", "--out", str(out)]) == 0
    assert out.read_bytes() == make_example(7).png
    assert capsys.readouterr().out.splitlines() == make_example(7).references
