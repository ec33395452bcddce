"""The action model: mask from lengths, batched equals one-by-one, loss, spans, artifacts, task."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.action.checkpoint import load_recognizer, save_recognizer
from mmserve.plugins.action.clips import ACTIONS, sample_clip
from mmserve.plugins.action.data import (
    ClipBatch,
    action_label_vocabulary,
    action_vocabulary,
    caption_grammar,
    collate_clips,
    parse_actions,
)
from mmserve.plugins.action.evaluate import score_predictions, truth
from mmserve.plugins.action.model import (
    SUBJECT_WORDS,
    ActionConfig,
    ActionRecognizer,
    ClipEncoderConfig,
    action_loss,
    clip_input,
)
from mmserve.plugins.action.spans import attention_span, find_actions, group_actions, span_iou
from mmserve.plugins.action.task import ActionTask, describe
from mmserve.plugins.action.train import regions_from, resolve_settings
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.nn.search import DecodeResult, greedy_decode

VOCAB = action_vocabulary()


def tiny_model(
    temporal: str = "bigru", cell: str = "lstm", attention: str = "bahdanau", input: str = "pixels", regions: int = 1
) -> ActionRecognizer:
    torch.manual_seed(0)
    enc = ClipEncoderConfig(stem_width=4, stage_widths=(8, 8), frame_dim=16, temporal=temporal, temporal_hidden=8,
                            input=input, regions=regions)  # fmt: skip
    dec = DecoderConfig(vocab_size=len(VOCAB), memory_dim=enc.memory_dim, embed_dim=8, hidden_dim=16, attn_dim=8,
                        cell=cell, attention=attention)  # fmt: skip
    return ActionRecognizer(ActionConfig(enc, dec), VOCAB).eval()


def random_clips(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, 3, 32, 48), dtype=torch.uint8, generator=gen) for n in lengths]


@pytest.mark.parametrize(("input", "regions"), [("pixels", 1), ("motion", 1), ("motion", 2)])
def test_mask_comes_from_the_lengths_and_padding_is_never_read(input, regions):
    model = tiny_model(input=input, regions=regions)
    clips = random_clips([5, 9, 2])
    batch = model.collate(clips)
    memory = model.encode(batch)
    r = regions  # frame t's regions are positions t * r .. t * r + r - 1
    assert memory.values.shape == (3, 9 * r, 16)
    assert memory.mask.tolist() == [[i < n * r for i in range(9 * r)] for n in (5, 9, 2)]
    garbage = ClipBatch(batch.frames.clone(), batch.lengths)
    for row, n in enumerate((5, 9, 2)):
        garbage.frames[row, n:] = 200  # whatever sits in the padding must not matter
    torch.testing.assert_close(model.encode(garbage).values * memory.mask.unsqueeze(-1), memory.values * memory.mask.unsqueeze(-1))
    state = model.init_state(memory)
    _, _, attention = model.step(torch.full((3,), VOCAB.bos_id), state, memory)
    assert attention.shape == (3, 9 * r) and float(attention.detach()[~memory.mask].abs().max()) == 0.0
    torch.testing.assert_close(attention.sum(1), torch.ones(3))


@pytest.mark.parametrize(("temporal", "cell", "attention", "input"),
                         [("bigru", "lstm", "bahdanau", "pixels"), ("bilstm", "gru", "luong_general", "pixels"),
                          ("none", "rnn", "bahdanau", "pixels"), ("bigru", "lstm", "bahdanau", "motion"),
                          ("bigru", "lstm", "bahdanau", "regions"), ("none", "lstm", "bahdanau", "regions")])  # fmt: skip
def test_batched_decoding_equals_one_by_one(temporal, cell, attention, input):
    regions = 2 if input == "regions" else 1
    model = tiny_model(temporal, cell, attention, "motion" if regions > 1 else input, regions)
    clips = random_clips([7, 16, 3, 11], seed=1)
    batched = greedy_decode(model, model.encode(model.collate(clips)), 8)
    for clip, together in zip(clips, batched):
        alone = greedy_decode(model, model.encode(model.collate([clip])), 8)[0]
        assert alone.tokens == together.tokens
        assert alone.score == pytest.approx(together.score, abs=1e-4)
        torch.testing.assert_close(alone.attention, together.attention, atol=1e-5, rtol=1e-4)


def test_motion_input_is_the_grey_level_and_its_differences_to_the_neighbouring_frames():
    c = ClipEncoderConfig(input="motion")
    clips = random_clips([4, 6], seed=3)
    batch = collate_clips(clips)
    x = clip_input(batch.frames, batch.lengths, c)  # [2, 6, 3, 32, 48]
    grey = clips[0][:, 0].float().div(255).sub(0.5).div(0.5)  # [4, H, W]
    torch.testing.assert_close(x[0, :4, 0], grey)
    torch.testing.assert_close(x[0, 1:4, 1], grey[1:] - grey[:-1])  # minus the previous frame
    torch.testing.assert_close(x[0, :3, 2], grey[1:] - grey[:-1])  # the next frame minus this one
    # no previous frame before the first, no next after the last real one (the padding is not read)
    assert float(x[0, 0, 1].abs().max()) == 0.0 and float(x[0, 3, 2].abs().max()) == 0.0
    torch.testing.assert_close(x[1], clip_input(clips[1].unsqueeze(0), torch.tensor([6]), c)[0])
    pixels = clip_input(batch.frames, batch.lengths, ClipEncoderConfig())
    torch.testing.assert_close(pixels, batch.frames.float().div(255).sub(0.5).div(0.5))


def test_pooled_baseline_has_one_memory_position_standing_for_every_frame():
    model = tiny_model("none")
    memory = model.encode(model.collate(random_clips([4, 6])))
    assert memory.values.shape == (2, 1, 16) and memory.mask.all()
    frames = model.frame_attention(torch.ones(3, 1), 6)
    torch.testing.assert_close(frames, torch.full((3, 6), 1 / 6))


def test_loss_supervises_attention_on_true_spans_only():
    model = tiny_model()
    logits = torch.randn(1, 8, len(VOCAB))
    targets = torch.tensor([VOCAB.encode("seven moves left then two zooms in")[1:]])  # [1, 8]
    spans = [[(1, 3), (5, 8)]]
    on_span = torch.zeros(1, 8, 10)
    on_span[0, 0:3, 1:4] = 1 / 3
    on_span[0, 4:7, 5:9] = 1 / 4
    on_span[0, 3] = on_span[0, 7] = 0.1  # "then" and <eos> rows are free
    off_span = torch.full((1, 8, 10), 0.1)
    total_on, ce = action_loss(logits, targets, on_span, VOCAB.pad_id, spans, 1.0)
    total_off, ce_off = action_loss(logits, targets, off_span, VOCAB.pad_id, spans, 1.0)
    assert torch.equal(ce, ce_off) and total_on < total_off
    assert total_on - ce == pytest.approx((3 * torch.log(torch.tensor(3.0)) + 3 * torch.log(torch.tensor(4.0))) / 6)
    plain, _ = action_loss(logits, targets, off_span, VOCAB.pad_id, spans, 0.0)
    assert torch.equal(plain, ce)
    padded = torch.cat([targets, torch.full((1, 2), VOCAB.pad_id)], 1)
    logits_padded = torch.cat([logits, torch.randn(1, 2, len(VOCAB)) * 50], 1)
    _, ce_padded = action_loss(logits_padded, padded, torch.cat([off_span, off_span[:, :2]], 1), VOCAB.pad_id, None, 1)
    torch.testing.assert_close(ce_padded, ce)
    assert model.pad_id == VOCAB.pad_id


def test_attention_spans_and_iou():
    weights = torch.tensor([0.0, 0.05, 0.2, 0.22, 0.25, 0.2, 0.02, 0.2, 0.0])
    assert attention_span(weights) == (2, 5)  # the far bump at 7 is not contiguous with the peak
    assert span_iou((2, 5), (2, 5)) == 1.0 and span_iou((0, 1), (2, 3)) == 0.0
    assert span_iou((0, 3), (2, 5)) == pytest.approx(2 / 6)
    words = ["seven", "moves", "left", "then", "two", "zooms", "in"]
    assert group_actions(words) == [("seven", "moves left", [0, 1, 2]), ("two", "zooms in", [4, 5, 6])]
    attention = torch.zeros(7, 10)
    attention[0:3, 1:4] = 1 / 3
    attention[4:7, 6:9] = 1 / 3
    found = find_actions(words, attention)
    assert [(f.subject, f.action, f.span) for f in found] == [("seven", "moves left", (1, 3)), ("two", "zooms in", (6, 8))]


def test_scores_count_order_subjects_and_localisation():
    spec = next(sample_clip("test", i) for i in range(100) if len(sample_clip("test", i).actions) == 2)
    true = truth(spec)
    assert score_predictions([spec], [true])["exact_sequence_accuracy"] == 1.0
    assert score_predictions([spec], [true])["localisation_iou50"] == 1.0
    swapped = [true[1], true[0]]
    scores = score_predictions([spec], [swapped])
    assert scores["exact_sequence_accuracy"] == 0.0 and scores["per_action_accuracy"] < 1.0
    shifted = [(s, a, (e + 1, e + 3)) for s, a, (_, e) in true]
    scores = score_predictions([spec], [shifted])
    assert scores["per_action_accuracy"] == 1.0 and scores["localisation_iou50"] == 0.0
    assert score_predictions([spec], [true[:1]])["per_action_accuracy"] == 0.5
    assert score_predictions([spec], [true[:1]])["action_count_accuracy"] == 0.0
    assert scores["action_count_accuracy"] == 1.0
    two = next(sample_clip("test", i) for i in range(100) if len(sample_clip("test", i).actors) == 2)
    other = {a.label for a in two.actors}
    wrong_digit = [(next(w for w in SUBJECT_WORDS if w != s and SUBJECT_WORDS.index(w) in other), a, span)
                   for s, a, span in truth(two)]  # fmt: skip
    assert score_predictions([two], [truth(two)])["two_digit_subject_accuracy"] == 1.0
    assert score_predictions([two], [wrong_digit])["two_digit_subject_accuracy"] == 0.0


def test_artifact_round_trip_and_postprocess(tmp_path):
    model = tiny_model()
    save_recognizer(model, tmp_path, {"epochs": 0})
    loaded = load_recognizer(tmp_path)
    assert loaded.config == model.config and loaded.vocab.itos == VOCAB.itos
    clips = random_clips([6])
    torch.testing.assert_close(loaded.encode(loaded.collate(clips)).values, model.encode(model.collate(clips)).values)
    ids = [VOCAB.stoi[w] for w in ["seven", "moves", "left", "then", "two", "fades", "in"]]
    attention = torch.zeros(len(ids), 16)
    attention[:3, 0:4] = 0.25
    attention[4:, 8:16] = 0.125
    attention[3] = 1 / 16
    out = describe(DecodeResult(ids, -0.7, attention), model, include_attention=True)
    assert out["caption"] == "seven moves left then two fades in" and out["tokens"][0] == "seven"
    assert [(a["subject"], a["action"], a["start_s"], a["end_s"]) for a in out["actions"]] == [
        ("seven", "moves left", 0.0, 0.5), ("two", "fades in", 1.0, 2.0)]  # 8 frames per second
    assert len(out["attention"]) == 7 and len(out["attention"][0]["frames"]) == 16
    assert ActionTask().input_cost(clips[0]) == 6
    with pytest.raises(ValueError, match="not an action artifact"):
        (tmp_path / "config.json").write_text('{"task": "captioning", "format_version": 1}')
        load_recognizer(tmp_path)


def test_settings_are_checked():
    assert resolve_settings({"temporal": "none", "stage_widths": "8,16"})["stage_widths"] == [8, 16]
    with pytest.raises(ValueError, match="unknown action setting"):
        resolve_settings({"frobnicate": 1})
    with pytest.raises(ValueError, match="true/false"):
        resolve_settings({"progress": "maybe"})


def test_collate_rejects_mixed_frame_sizes():
    with pytest.raises(AssertionError):
        collate_clips([])


def test_grammar_allows_every_real_caption_and_decoding_writes_only_well_formed_ones():
    grammar = caption_grammar(VOCAB)
    for index in range(50):
        ids = VOCAB.encode(sample_clip("train", index).caption)  # <bos> ... <eos>
        assert all(bool(grammar[a, b]) for a, b in zip(ids, ids[1:])), sample_clip("train", index).caption
    stoi = VOCAB.stoi
    assert not grammar[stoi["rotates"], stoi["left"]] and not grammar[stoi["moves"], stoi["in"]]
    assert not grammar[VOCAB.bos_id, stoi["moves"]] and not grammar[stoi["then"], VOCAB.eos_id]
    model = tiny_model()  # untrained: left alone it writes anything
    results = greedy_decode(model, model.encode(model.collate(random_clips([8, 12, 5], seed=2))), 15)  # 15: four whole groups
    for result in results:
        words = VOCAB.decode(result.tokens)
        assert words and len(words) % 4 == 3, words  # whole "<subject> <verb> <word>" groups joined by "then"
        for subject, action in parse_actions(words):
            assert subject in SUBJECT_WORDS and action in ACTIONS, words
    assert caption_grammar(action_label_vocabulary()) is None


def test_regions_are_positions_whose_attention_sums_to_frames():
    model = tiny_model(regions=2)
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0]])  # frames 0, 1 (2 regions each), padding
    torch.testing.assert_close(model.frame_attention(attention, 2), torch.tensor([[0.3, 0.7]]))
    frames = random_clips([6], seed=5)
    result = greedy_decode(model, model.encode(model.collate(frames)), 7)[0]
    assert result.attention.shape[1] == 12
    body = describe(result, model, include_attention=True)
    assert all(len(row["frames"]) == 6 for row in body["attention"])
    assert all(0 <= a["start_s"] <= a["end_s"] for a in body["actions"])


def test_a_one_region_artifact_starts_a_two_region_model(tmp_path):
    one, two = tiny_model(), tiny_model(regions=2)
    save_recognizer(one, tmp_path, {})
    regions_from(tmp_path, two)
    old = one.encoder.cnn.project[0]
    grid = torch.randn(3, 8, *one.encoder.cnn.grid)  # [N, C, h, w]
    pooled = torch.randn(3, old.in_features - grid[0].numel())
    for r, strip in enumerate(grid.chunk(2, dim=3)):
        shown = torch.zeros_like(grid)  # the old projection seeing only this strip's columns
        shown[..., r * strip.shape[3] : (r + 1) * strip.shape[3]] = strip
        expected = old(torch.cat([shown.flatten(1), pooled], dim=1))
        got = two.encoder.cnn.region_project[r][0](torch.cat([strip.flatten(1), pooled], dim=1))
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(two.encoder.rnn.weight_ih_l0, one.encoder.rnn.weight_ih_l0)
    torch.testing.assert_close(two.encoder.cnn.body[0].weight, one.encoder.cnn.body[0].weight)
