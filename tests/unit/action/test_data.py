"""The digit-action clip generator: spans match the rendered motion, splits keep handwriting apart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmserve.plugins.action import clips as C
from mmserve.plugins.action.clips import ClipSpec, sample_clip, split_samples
from mmserve.plugins.action.data import (
    ActionClips,
    action_vocabulary,
    collate_clips,
    collate_training,
    encode_video,
    parse_actions,
)
from mmserve.plugins.action.render import (
    affine_thetas,
    centre_of_mass,
    draw_objects,
    render_actor,
    render_clip,
    shape_inverse,
)

CLIPS = [sample_clip(split, i, seed=5) for split in C.SPLITS for i in range(120)]


def _covering_clips(minimum: int = 24) -> list[ClipSpec]:
    """The first clips that, together, perform every action (at least `minimum` of them)."""
    chosen, seen = [], set()
    for spec in CLIPS:
        new = {a.action for a in spec.actions} - seen
        if new or len(chosen) < minimum:
            chosen.append(spec)
            seen |= new
        if seen == set(C.ACTIONS) and len(chosen) >= minimum:
            break
    return chosen


def test_handwriting_splits_are_disjoint_and_clips_stay_in_their_split():
    sets = {s: set(split_samples(s).tolist()) for s in C.SPLITS}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["val"] and not sets["val"] & sets["test"]
    assert sum(map(len, sets.values())) == 1797
    for split in C.SPLITS:
        for i in range(100):
            spec = sample_clip(split, i, seed=1, epoch=2)
            used = {a.sample for a in spec.actors} | {d.sample for d in spec.distractors}
            assert used <= sets[split], (split, i, used - sets[split])


@pytest.mark.parametrize("spec", CLIPS[::7], ids=lambda s: s.caption)
def test_caption_spans_and_subjects_are_consistent(spec: ClipSpec):
    assert C.MIN_FRAMES <= spec.num_frames <= C.MAX_FRAMES
    assert 1 <= len(spec.actions) <= C.MAX_ACTIONS
    groups = parse_actions(spec.caption.split())
    assert [(C.NUMBER_WORDS[spec.actors[a.actor].label], a.action) for a in spec.actions] == groups
    previous_end = -1
    for action in spec.actions:
        assert previous_end < action.start < action.end < spec.num_frames  # ordered, disjoint, inside the clip
        assert action.end - action.start + 1 >= C.MIN_DURATION
        previous_end = action.end
    assert len({a.label for a in spec.actors}) == len(spec.actors), "two named digits are different digits"
    assert {a.actor for a in spec.actions} == set(range(len(spec.actors))), "every named digit acts"


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented-handwriting"])
def test_each_action_really_happens_within_its_span_and_nothing_moves_outside(augment: bool):
    checked = set()
    for spec in _covering_clips():
        if augment:
            spec = sample_clip(spec_split(spec), spec_index(spec), seed=5, augment=True)
        for index in range(len(spec.actors)):
            layers = render_actor(spec, index)  # [T, H, W]
            mass = layers.flatten(1).sum(1)
            com = [centre_of_mass(layer) if layer.sum() > 1 else (np.nan, np.nan) for layer in layers]
            busy = set()
            for act in (a for a in spec.actions if a.actor == index):
                s, e = act.start, act.end
                busy.update(range(s + 1, e + 1))
                (x0, y0), (x1, y1) = com[s], com[e]
                if act.action == "moves left":
                    assert x1 < x0 - 4, (spec.caption, x0, x1)
                elif act.action == "moves right":
                    assert x1 > x0 + 4, (spec.caption, x0, x1)
                elif act.action == "moves up":
                    assert y1 < y0 - 3, (spec.caption, y0, y1)
                elif act.action == "moves down":
                    assert y1 > y0 + 3, (spec.caption, y0, y1)
                elif act.action == "zooms in":
                    assert mass[e] > 1.4 * mass[s], (spec.caption, mass[s], mass[e])
                elif act.action == "zooms out":
                    assert mass[e] < 0.7 * mass[s], (spec.caption, mass[s], mass[e])
                elif act.action == "fades out":
                    assert mass[s] > 5 and mass[e] < 1e-3, (spec.caption, mass[s], mass[e])
                elif act.action == "fades in":
                    assert mass[s] < 1e-3 and mass[e] > 5, (spec.caption, mass[s], mass[e])
                elif act.action.startswith("rotates"):
                    sign = 1 if act.action == "rotates clockwise" else -1
                    assert sign * (act.after.angle - spec.actor_states(index)[s].angle) >= C.ROTATE[0] - 1e-6
                    assert not torch.allclose(layers[s], layers[e], atol=0.05)
                checked.add(act.action)
            change = (layers[1:] - layers[:-1]).abs().flatten(1).amax(1)  # [T-1]: frame f+1 vs f
            still = [f for f in range(1, spec.num_frames) if f not in busy]
            # outside its spans an actor does not change at all; inside, every frame moves on
            if still:
                assert float(change[[f - 1 for f in still]].max()) < 1e-5, spec.caption
            assert all(float(change[f - 1]) > 1e-4 for f in busy), spec.caption
    assert checked == set(C.ACTIONS), f"never exercised: {set(C.ACTIONS) - checked}"


def test_handwriting_augmentation_changes_only_the_named_digits_shapes():
    for split in C.SPLITS:
        for i in range(40):
            plain, augmented = sample_clip(split, i, seed=3), sample_clip(split, i, seed=3, augment=True)
            assert augmented.caption == plain.caption and augmented.spans == plain.spans
            assert augmented.distractors == plain.distractors and augmented.jitter == plain.jitter
            for p, a in zip(plain.actors, augmented.actors):
                assert (p.shear, p.aspect, p.stroke_gamma) == (0.0, 1.0, 1.0)
                assert abs(a.shear) <= C.AUGMENT_SHEAR and C.AUGMENT_ASPECT[0] <= a.aspect <= C.AUGMENT_ASPECT[1]
                assert C.AUGMENT_STROKE_GAMMA[0] <= a.stroke_gamma <= C.AUGMENT_STROKE_GAMMA[1]
                assert dataclasses.replace(a, shear=0.0, aspect=1.0, stroke_gamma=1.0) == p
            assert not torch.equal(render_clip(plain), render_clip(augmented))


def test_shape_distortion_stretches_and_shears_the_glyph_in_place():
    glyph = torch.zeros(1, 1, 8, 8)
    glyph[0, 0, 2:6, 2:6] = 1.0  # a square in the middle of the digit's box
    size = (48, 48)
    centre, side = torch.tensor([24.0]), torch.tensor([24.0])
    upright = affine_thetas(centre, centre, torch.tensor([0.0]), side, size)

    def extent(layer: torch.Tensor) -> tuple[float, float]:
        cols, rows = (layer.sum(0) > 0.5).sum(), (layer.sum(1) > 0.5).sum()
        return float(cols), float(rows)

    plain = draw_objects(glyph, upright, torch.ones(1), size)[0]
    wide = draw_objects(glyph, shape_inverse(torch.tensor([0.0]), torch.tensor([1.44])) @ upright, torch.ones(1), size)[0]
    (w0, h0), (w1, h1) = extent(plain), extent(wide)
    assert w1 / h1 > 1.3 * (w0 / h0)  # aspect 1.44: wider and lower, area kept
    assert abs(float(wide.sum()) - float(plain.sum())) < 0.05 * float(plain.sum())
    sheared = draw_objects(glyph, shape_inverse(torch.tensor([0.3]), torch.tensor([1.0])) @ upright, torch.ones(1), size)[0]
    top, bottom = sheared[:24], sheared[24:]  # x = shear * y: the bottom half leans right of the top half
    assert centre_of_mass(bottom)[0] > centre_of_mass(top)[0] + 1
    assert abs(centre_of_mass(sheared)[0] - centre_of_mass(plain)[0]) < 0.5  # sheared about its own centre


def test_positive_angles_turn_clockwise_on_screen():
    glyph = torch.zeros(1, 1, 8, 8)
    glyph[0, 0, 0, 3:5] = 1.0  # a bar at the top of the digit
    size = (32, 32)
    layers = draw_objects(glyph.repeat(2, 1, 1, 1),
                          affine_thetas(torch.tensor([16.0, 16.0]), torch.tensor([16.0, 16.0]),
                                        torch.tensor([0.0, 90.0]), torch.tensor([16.0, 16.0]), size),
                          torch.ones(2), size)  # fmt: skip
    (x0, y0), (x1, y1) = centre_of_mass(layers[0]), centre_of_mass(layers[1])
    assert y0 < 12 and abs(x0 - 16) < 1.5  # upright: the bar is at the top
    assert x1 > 20 and abs(y1 - 16) < 1.5  # a clockwise quarter turn moves the top to the right


def test_rendered_clip_has_noise_distractors_and_jitter():
    spec = next(s for s in CLIPS if s.distractors)
    frames = render_clip(spec)
    assert frames.dtype == torch.uint8 and frames.shape == (spec.num_frames, 3, *C.FRAME_SIZE)
    assert torch.equal(frames[:, 0], frames[:, 1])
    assert any(abs(dx) > 0.1 for dx, _ in spec.jitter)
    assert frames.float().std() > 5
    assert torch.equal(frames, render_clip(sample_clip(spec_split(spec), spec_index(spec), seed=5)))


def spec_split(spec: ClipSpec) -> str:
    return C.SPLITS[CLIPS.index(spec) // 120]


def spec_index(spec: ClipSpec) -> int:
    return CLIPS.index(spec) % 120


def test_dataset_items_and_collation():
    vocab = action_vocabulary()
    data = ActionClips("train", 4, vocab, seed=2)
    items = [data[i] for i in range(4)]
    clips, captions, spans = collate_training(items, vocab.pad_id)
    lengths = [frames.shape[0] for frames, _, _ in items]
    assert clips.lengths.tolist() == lengths and clips.frames.shape[1] == max(lengths)
    for row, (frames, _ids, clip_spans) in enumerate(items):
        assert torch.equal(clips.frames[row, : lengths[row]], frames)
        assert not clips.frames[row, lengths[row] :].any()
        assert vocab.decode(captions[row].tolist()) == data.spec(row).caption.split()
        assert clip_spans == data.spec(row).spans
    data.set_epoch(1)
    assert data.spec(0) != sample_clip("train", 0, seed=2, epoch=0)
    with pytest.raises(AssertionError, match="share"):
        collate_clips([torch.zeros(3, 3, 32, 48, dtype=torch.uint8), torch.zeros(3, 3, 16, 16, dtype=torch.uint8)])


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi", "gif"])
def test_clips_encode_to_video_files_pyav_reads_back(fmt):
    import io

    import av

    frames = render_clip(CLIPS[0])
    data = encode_video(frames, fmt, fps=8)
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == frames.shape[0]
    assert decoded[0].shape == (C.FRAME_SIZE[0] * 4, C.FRAME_SIZE[1] * 4, 3)
