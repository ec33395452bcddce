"""Action training: frame-trunk pretraining targets, the clip pool, fixed layers, the training loop."""

from __future__ import annotations

import json

import pytest
import torch

from mmserve.plugins.action.checkpoint import load_recognizer, save_recognizer
from mmserve.plugins.action.clips import sample_clip
from mmserve.plugins.action.data import ACTION_LABELS, ActionClips, action_label_vocabulary, action_vocabulary
from mmserve.plugins.action.evaluate import evaluate_model
from mmserve.plugins.action.model import ClipEncoderConfig, FrameCNN
from mmserve.plugins.action.pretrain import NOTHING, POSE_VALUES, frame_targets, pretrain_trunk
from mmserve.plugins.action.render import centre_of_mass, render_actor, render_clip
from mmserve.plugins.action.task import describe
from mmserve.plugins.action.train import (
    GridClips,
    _freeze,
    _train_mode,
    build_model,
    load_parts,
    resolve_settings,
    train_recognizer,
)
from mmserve.plugins.artifacts import load_weights
from mmserve.plugins.nn.search import DecodeResult, greedy_decode
from mmserve.plugins.task import TrainOptions
from mmserve.plugins.tracking import MemoryRunLogger

VOCAB = action_vocabulary()
TINY = {"stem_width": 4, "stem_stride": 1, "stage_widths": [8, 8], "frame_dim": 16, "temporal_hidden": 8,
        "embed_dim": 8, "hidden_dim": 16, "attn_dim": 8, "progress": False}  # fmt: skip


def test_stem_stride_sets_the_grid():
    assert FrameCNN(ClipEncoderConfig(stem_stride=2, stage_widths=(8, 8))).grid == (4, 6)
    assert FrameCNN(ClipEncoderConfig(stem_stride=1, stage_widths=(8, 8))).grid == (8, 12)


def test_frame_targets_name_each_visible_digit_at_its_rendered_centre():
    checked = moved = 0
    for index in range(12):
        spec = sample_clip("train", index, seed=3)
        frames = list(range(spec.num_frames))
        classes, pose = frame_targets(spec, frames, (8, 12))
        assert classes.shape == (spec.num_frames, 8, 12) and pose.shape == (spec.num_frames, POSE_VALUES, 8, 12)
        for a, actor in enumerate(spec.actors):
            layers = render_actor(spec, a)  # [T, H, W], no jitter
            for t, state in enumerate(spec.actor_states(a)):
                cells = (classes[t] == actor.label).nonzero().tolist()
                if state.alpha < 0.5:
                    assert not cells, f"clip {index} frame {t}: an invisible digit has a cell"
                    continue
                assert len(cells) == 1, f"clip {index} frame {t}: {len(cells)} cells for one digit"
                x, y = centre_of_mass(layers[t])
                dx, dy = spec.jitter[t]
                i, j = cells[0]
                # the cell (4 x 4 px) holds the drawn digit's centre, give or take its asymmetric mass
                assert abs((j + 0.5) * 4 - (x + dx)) < 6 and abs((i + 0.5) * 4 - (y + dy)) < 6
                assert abs(float(pose[t, 2, i, j]) - state.angle / 90) < 1e-5
                # the change channels say how the drawn digit moves from the previous frame to the next
                before, after = max(t - 1, 0), min(t + 1, spec.num_frames - 1)
                (x0, y0), (x1, y1) = centre_of_mass(layers[before]), centre_of_mass(layers[after])
                if state.alpha == 1.0 and spec.actor_states(a)[before].alpha == spec.actor_states(a)[after].alpha == 1.0:
                    assert abs(4 * float(pose[t, 4, i, j]) - (x1 - x0)) < 1.5 and abs(4 * float(pose[t, 5, i, j]) - (y1 - y0)) < 1.5
                moved += abs(float(pose[t, 4, i, j])) > 0.2
                checked += 1
        assert int((classes != NOTHING).sum()) <= 2 * spec.num_frames
    assert checked > 60 and moved > 5


def test_pretraining_trains_the_trunk_only_and_reports_val_accuracy():
    torch.manual_seed(0)
    config = ClipEncoderConfig(stem_width=4, stem_stride=1, stage_widths=(8, 8), frame_dim=16)
    cnn = FrameCNN(config)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    result = pretrain_trunk(cnn, config, steps=2, clips_per_step=2, frames_per_clip=2, progress=False, val_clips=3)
    assert result.steps == 2 and 0.0 <= result.digit_accuracy <= 1.0 and 0.0 <= result.false_alarms <= 1.0
    after = cnn.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("body."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("project."))


def test_clip_pool_renders_once_and_cycles():
    pooled = ActionClips("train", 3, VOCAB, seed=1, pool=2)
    fresh = ActionClips("train", 3, VOCAB, seed=1)
    frames, ids, spans = pooled[1]
    torch.testing.assert_close(frames, render_clip(sample_clip("train", 1, 1)))
    assert spans == sample_clip("train", 1, 1).spans and ids.tolist() == VOCAB.encode(sample_clip("train", 1, 1).caption)
    assert pooled[1][0].data_ptr() == frames.data_ptr()  # kept, not rendered again
    pooled.set_epoch(1)
    fresh.set_epoch(1)
    torch.testing.assert_close(pooled[2][0], fresh[2][0])
    pooled.set_epoch(2)  # back to the first set
    assert pooled[1][0].data_ptr() == frames.data_ptr()


def test_frozen_stages_do_not_change_while_the_rest_trains():
    model = build_model(resolve_settings(TINY), VOCAB)
    frozen = _freeze(model, 1)
    fixed = {k: v.clone() for k, v in frozen.state_dict().items()}  # incl. batch-norm statistics
    _train_mode(model, frozen)
    assert not frozen.training and model.encoder.cnn.body[-1].training
    clips = [render_clip(sample_clip("train", i, 0)) for i in range(2)]
    batch = model.collate(clips)
    captions = torch.tensor([VOCAB.encode(sample_clip("train", 0, 0).caption)] * 2)
    logits, _, _ = model.forward_train(batch, captions[:, :-1])
    logits.sum().backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.equal(fixed[k], v) for k, v in frozen.state_dict().items())


def test_training_keeps_the_best_validated_model(tmp_path):
    logger = MemoryRunLogger()
    extra = {**TINY, "train_clips": 4, "val_clips": 2, "eval_every": 1, "pretrain_steps": 1, "freeze_stages": 1}
    options = TrainOptions(output_dir=tmp_path, epochs=1, batch_size=2, max_steps=2, extra=extra)
    result = train_recognizer(options, logger)
    assert result.metrics["steps_done"] == 2
    training = json.loads((tmp_path / "config.json").read_text())["training"]
    assert training["steps"] in (1, 2) and training["pretrain_steps_done"] == 1
    assert "val_selection_score" in training
    model = load_recognizer(tmp_path)
    assert model.config.encoder.stem_stride == 1


def test_a_two_region_model_trains_from_a_one_region_artifact_and_loads(tmp_path):
    one = tmp_path / "one"
    extra = {**TINY, "input": "motion", "train_clips": 4, "val_clips": 2, "eval_every": 1}
    train_recognizer(TrainOptions(output_dir=one, epochs=1, batch_size=2, max_steps=1, extra=extra), MemoryRunLogger())
    extra = {**extra, "regions": 2, "init_regions_from": str(one), "freeze_stages": 1}
    result = train_recognizer(TrainOptions(output_dir=tmp_path / "two", epochs=1, batch_size=2, max_steps=2, extra=extra),
                              MemoryRunLogger())  # fmt: skip
    assert result.metrics["steps_done"] == 2
    model = load_recognizer(tmp_path / "two")
    assert model.regions == 2 and model.config.encoder.input == "motion"
    torch.testing.assert_close(model.encoder.cnn.body[0].weight, load_recognizer(one).encoder.cnn.body[0].weight)


def test_single_label_clips_have_one_digit_one_action_and_a_class_token():
    labels = ActionClips("train", 6, action_label_vocabulary(), seed=2, mode="label")
    for index in range(6):
        spec = labels.spec(index)
        assert len(spec.actors) == 1 and len(spec.actions) == 1
        _, ids, spans = labels[index]
        word = labels.vocab.itos[int(ids[1])]
        assert len(ids) == 3 and word.replace("_", " ") == spec.actions[0].action and spans == spec.spans
    # the sequence clips are not moved by the option
    assert sample_clip("train", 4, 2, num_actions=None) == sample_clip("train", 4, 2)


def test_label_mode_trains_scores_and_serves_one_class_with_its_span(tmp_path):
    extra = {**TINY, "mode": "label", "train_clips": 4, "val_clips": 2, "eval_every": 1}
    train_recognizer(TrainOptions(output_dir=tmp_path, epochs=1, batch_size=2, max_steps=1, extra=extra), MemoryRunLogger())
    model = load_recognizer(tmp_path)
    assert model.config.mode == "label" and len(model.vocab) == len(ACTION_LABELS) + 4
    metrics, predictions, specs = evaluate_model(model, clips=3, progress=False)
    assert set(metrics) >= {"label_accuracy", "localisation_iou50"} and len(predictions) == 3
    clip = render_clip(specs[0])
    result = greedy_decode(model, model.encode(model.collate([clip])), 4)[0]
    label = int(model.vocab.encode("moves_left")[1])
    forced = DecodeResult(tokens=[label], score=-0.5, attention=torch.softmax(torch.arange(len(clip), dtype=torch.float).unsqueeze(0), -1))
    out = describe(forced, model, include_attention=False)
    assert out["caption"] == "moves left" and out["tokens"] == ["moves_left"]
    assert out["actions"][0]["subject"] is None and out["actions"][0]["end_s"] > out["actions"][0]["start_s"]
    assert isinstance(describe(result, model, include_attention=True)["actions"], list)


def test_cached_trunk_grids_give_the_same_forward_as_frames(tmp_path):
    extra = {**TINY, "train_clips": 4, "val_clips": 2, "eval_every": 1}
    train_recognizer(TrainOptions(output_dir=tmp_path / "first", epochs=1, batch_size=2, max_steps=1, extra=extra), MemoryRunLogger())
    model = build_model(resolve_settings(TINY), VOCAB)
    load_weights(tmp_path / "first", model)
    model.eval()
    clips = ActionClips("train", 2, VOCAB, seed=0, pool=1, keep=False)
    grids = GridClips(clips, model)
    (grid, ids, _), (grid_b, ids_b, _) = grids[0], grids[1]
    assert grid.dtype == torch.float16 and grids[0][0] is grid  # computed once
    lengths = torch.tensor([len(grid), len(grid_b)])
    captions = torch.nn.utils.rnn.pad_sequence([ids, ids_b], batch_first=True, padding_value=VOCAB.pad_id)
    from_grids = model.forward_train_grids(model.collate([grid, grid_b]).frames, lengths, captions[:, :-1])
    from_frames = model.forward_train(model.collate([clips.frames(0), clips.frames(1)]), captions[:, :-1])
    torch.testing.assert_close(from_grids[0], from_frames[0], atol=2e-2, rtol=1e-2)  # fp16 grids
    # and the training loop runs on them, from an artifact, with every stage fixed
    extra = {**extra, "init_from": str(tmp_path / "first"), "freeze_stages": 2, "cache_grids": True}
    result = train_recognizer(TrainOptions(output_dir=tmp_path / "second", epochs=2, batch_size=2, max_steps=3, extra=extra),
                              MemoryRunLogger())  # fmt: skip
    assert result.metrics["steps_done"] == 3


def test_bundled_single_label_model_names_one_action_with_a_span():
    from mmserve.plugins.action.task import LABEL_WEIGHTS_DIR

    model = load_recognizer(LABEL_WEIGHTS_DIR)
    assert model.config.mode == "label"
    assert sum(f.stat().st_size for f in LABEL_WEIGHTS_DIR.iterdir()) < 10 * 1024 * 1024
    metrics = json.loads((LABEL_WEIGHTS_DIR / "metrics.json").read_text())
    assert metrics["test_label_accuracy"] > metrics["test_baseline_most_frequent_label_accuracy"]
    clip = render_clip(sample_clip("test", 0, num_actions=1))
    out = describe(greedy_decode(model, model.encode(model.collate([clip])), 4)[0], model, include_attention=False)
    assert len(out["actions"]) == 1 and out["caption"].replace(" ", "_") in ACTION_LABELS
    assert out["actions"][0]["subject"] is None and out["actions"][0]["end_s"] > out["actions"][0]["start_s"]


def test_init_parts_takes_the_trunk_and_decoder_of_a_temporal_model_for_the_pooled_baseline(tmp_path):
    vocab = action_vocabulary()
    settings = {**resolve_settings({}), "stem_width": 4, "stage_widths": [8, 8], "frame_dim": 16, "temporal_hidden": 8,
                "embed_dim": 8, "hidden_dim": 16, "attn_dim": 8}  # fmt: skip
    torch.manual_seed(0)
    full = build_model(settings, vocab)
    save_recognizer(full, tmp_path, {})
    torch.manual_seed(1)
    baseline = build_model({**settings, "temporal": "none"}, vocab)
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    names = load_parts(tmp_path, baseline, ("encoder.cnn", "decoder"))
    assert names and all(n.startswith(("encoder.cnn", "decoder")) for n in names)
    for name, value in baseline.state_dict().items():
        if name in names:
            torch.testing.assert_close(value, full.state_dict()[name])
        else:  # the presence head and anything else keep their own initialisation
            torch.testing.assert_close(value, before[name])
    with pytest.raises(AssertionError, match="no parameter under"):
        load_parts(tmp_path, baseline, ("encoder.rnn_that_is_not_there",))


def test_selection_scoring_reads_artifacts_and_an_averaged_one_loads(tmp_path, capsys):
    from mmserve.plugins.action.evaluate import main as score_artifacts
    from mmserve.plugins.average import write_average

    for seed in (0, 1):
        torch.manual_seed(seed)
        save_recognizer(build_model(resolve_settings(TINY), VOCAB), tmp_path / f"run{seed}", {})
    soup = write_average([tmp_path / "run0", tmp_path / "run1"], tmp_path / "soup")
    model = load_recognizer(soup)  # strict: every tensor of the architecture is there
    a, b = load_recognizer(tmp_path / "run0"), load_recognizer(tmp_path / "run1")
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a.state_dict()[name] + b.state_dict()[name]) / 2)
    score_artifacts([str(soup), "--split", "val", "--seed", "1", "--clips", "3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{soup}: exact_sequence_accuracy ") and "localisation_iou50" in line
