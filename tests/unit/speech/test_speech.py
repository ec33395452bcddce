"""The speech plugin: text, features, listener, decoding, preprocessing, task output, data."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from mmserve.plugins.average import write_average
from mmserve.plugins.errors import InputError, PayloadTooLarge
from mmserve.plugins.nn.decoding import DecodeParams, DecodingBatch, Sequence
from mmserve.plugins.nn.ngram import NGramLM
from mmserve.plugins.nn.search import DecodeResult, beam_search, greedy_decode
from mmserve.plugins.speech import data
from mmserve.plugins.speech import lm as speech_lm
from mmserve.plugins.speech.checkpoint import load_speech_model, save_speech_model
from mmserve.plugins.speech.evaluate import (
    SILENCE_PAD_S,
    background,
    error_rates,
    error_rates_by_group,
    long_recordings,
    pad_with_background,
    silence_padded,
)
from mmserve.plugins.speech.features import FeatureConfig, LogMel, frames_for, normalize_utterance
from mmserve.plugins.speech.grow import grow_from
from mmserve.plugins.speech.model import SpeechConfig, ctc_loss, guided_attention_loss, memory_lengths, speech_loss
from mmserve.plugins.speech.preprocess import audio_bytes_to_features, waveform_to_wav
from mmserve.plugins.speech.task import SpeechTask, word_times
from mmserve.plugins.speech.text import char_vocabulary, decode_chars, encode_chars, normalize_text
from mmserve.plugins.speech.train import (
    augment,
    build_model,
    join_pairs,
    keep_checkpoint,
    length_batches,
    pad_edges,
    pad_targets,
    resolve_settings,
    spec_augment,
    warp_frequencies,
)
from mmserve.plugins.task import InputLimits
from tests.unit.media_fixtures import encode_audio, stereo_sine

TINY = {"n_mels": 16, "conv_channels": 4, "conv_dim": 16, "listener_hidden": 8, "embed_dim": 8,
        "speller_hidden": 16, "attn_dim": 8, "dropout": 0.0}  # fmt: skip


def tiny_model():
    torch.manual_seed(0)
    return build_model(resolve_settings(TINY)).eval()


def random_features(lengths: list[int], bands: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, bands, generator=gen) for n in lengths]


def test_text_is_normalised_and_round_trips():
    assert normalize_text("Twenty-One, it's   DONE!") == "twenty one it's done"
    vocab = char_vocabulary()
    assert len(vocab) == 32
    ids = encode_chars(vocab, "it's ok")
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert decode_chars(vocab, ids[1:]) == "it's ok"


def test_log_mel_shape_and_per_utterance_normalisation():
    config = FeatureConfig(n_mels=40)
    wave = torch.from_numpy(stereo_sine(16000, 0.5, 440.0)[0]) + 0.01 * torch.randn(8000)
    feats = LogMel(config)(wave)
    assert feats.shape == (frames_for(8000, config), 40)
    torch.testing.assert_close(feats.mean(dim=0), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(dim=0), torch.ones(40), atol=1e-3, rtol=0)


def test_a_model_can_normalise_its_features_on_the_speech(tmp_path):
    assert tiny_model().config.features.stats_margin_s is None  # the whole clip, as before
    model = build_model(resolve_settings({**TINY, "stats_margin_s": 0.2}))
    assert model.config.features.stats_margin_s == 0.2
    save_speech_model(model, tmp_path, {})
    assert load_speech_model(tmp_path).config.features.stats_margin_s == 0.2


def test_listener_shortens_time_eightfold_and_batches_like_one_by_one():
    model = tiny_model()
    feats = random_features([83, 40, 17, 1])
    with torch.no_grad():
        memory = model.encode(model.collate(feats))
        assert memory.mask.sum(dim=1).tolist() == [11, 5, 3, 1]  # ceil(ceil(ceil(T/2)/2)/2)
        for i, f in enumerate(feats):
            alone = model.encode(model.collate([f]))
            n = int(alone.mask.sum())
            torch.testing.assert_close(memory.values[i, :n], alone.values[0, :n], atol=1e-5, rtol=1e-4)


def test_listener_blocks_batch_like_one_by_one():
    torch.manual_seed(0)
    model = build_model(resolve_settings({**TINY, "listener_blocks_4x": 1, "listener_blocks_8x": 1,
                                          "listener_block_hidden": 6})).eval()  # fmt: skip
    for block in [*model.listener.blocks4, *model.listener.blocks8]:
        torch.nn.init.normal_(block.out.weight)  # a trained block: no longer the identity
        torch.nn.init.normal_(block.out.bias)
    feats = random_features([83, 40, 17, 1])
    with torch.no_grad():
        x8, len8, x4, len4 = model.listen(model.collate(feats))
        for i, f in enumerate(feats):
            alone8, n8, alone4, n4 = model.listen(model.collate([f]))
            assert (len8[i], len4[i]) == (n8[0], n4[0])
            torch.testing.assert_close(x8[i, : n8[0]], alone8[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(x4[i, : n4[0]], alone4[0], atol=1e-5, rtol=1e-4)


def grow_and_train(trained, grown, seed: int):
    """Grow `trained` into `grown`, check both compute the same loss, then take three Adam steps
    on `grown`. Returns the grown model's initial decoder state before training."""
    grow_from(grown, trained)
    grown.eval()
    vocab = trained.vocab
    targets = pad_targets([encode_chars(vocab, "hi there"), encode_chars(vocab, "yo")], vocab.pad_id)
    batch = trained.collate(random_features([80, 64], seed=seed))
    with torch.no_grad():
        before, _ = speech_loss(trained, batch, targets, 0.1, 0.3)
        after, _ = speech_loss(grown, batch, targets, 0.1, 0.3)
        state = grown.init_state(grown.encode(batch))
    torch.testing.assert_close(after, before)
    optimizer = torch.optim.Adam(grown.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        speech_loss(grown.train(), batch, targets, 0.1, 0.3)[0].backward()
        optimizer.step()
    return state


def test_a_model_grown_by_listener_blocks_starts_as_the_trained_one_and_trains_them():
    grown = build_model(resolve_settings({**TINY, "listener_blocks_4x": 1, "listener_blocks_8x": 2}))
    grow_and_train(tiny_model(), grown, seed=2)
    blocks = [*grown.listener.blocks4, *grown.listener.blocks8]
    assert all(block.out.weight.abs().sum() > 0 for block in blocks), "every new block should have started to learn"
    assert all(block.lstm.weight_ih_l0.grad.abs().sum() > 0 for block in blocks)


def test_a_model_grown_by_a_wider_speller_starts_as_the_trained_one_and_trains_the_new_units():
    trained = tiny_model()
    for parameter in trained.decoder.parameters():  # trained weights everywhere, biases included
        torch.nn.init.normal_(parameter, std=0.3)
    old = TINY["speller_hidden"]
    grown = build_model(resolve_settings({**TINY, "speller_hidden": old + 8, "listener_blocks_8x": 1}))
    state = grow_and_train(trained, grown, seed=3)
    assert state["h"][:, 0, old:].abs().sum() > 0, "the new units should run from the start"
    decoder = grown.decoder
    assert decoder.out.weight[:, old : old + 8].abs().sum() > 0, "the output layer should start to read the new units"
    assert decoder.attention.query_proj.weight[:, old:].abs().sum() > 0
    assert decoder.cells[0].weight_hh[:, old:].abs().sum() > 0


def test_a_model_grown_by_wider_listener_blocks_starts_as_the_trained_one_and_trains_the_new_units():
    torch.manual_seed(0)
    trained = build_model(resolve_settings({**TINY, "listener_blocks_4x": 1, "listener_blocks_8x": 1,
                                            "listener_block_hidden": 6})).eval()  # fmt: skip
    blocks = [*trained.listener.blocks4, *trained.listener.blocks8]
    for parameter in (p for block in blocks for p in block.parameters()):  # trained blocks: not the identity
        torch.nn.init.normal_(parameter, std=0.3)
    grown = build_model(resolve_settings({**TINY, "listener_blocks_4x": 1, "listener_blocks_8x": 2,
                                          "listener_block_hidden": 10}))  # fmt: skip
    grow_and_train(trained, grown, seed=4)
    for block in [*grown.listener.blocks4, *grown.listener.blocks8][:2]:
        forward_new, backward_new = block.out.weight[:, 6:10], block.out.weight[:, 16:]
        assert forward_new.abs().sum() > 0 and backward_new.abs().sum() > 0, "the projection should read the new units"
        assert block.lstm.weight_hh_l0[:, 6:].abs().sum() > 0 and block.lstm.weight_hh_l0_reverse[:, 6:].abs().sum() > 0


@pytest.mark.parametrize("setting", ["speller_hidden", "listener_block_hidden"])
def test_a_model_cannot_be_grown_narrower(setting):
    with_blocks = {**TINY, "listener_blocks_8x": 1, "listener_block_hidden": 8}
    torch.manual_seed(0)
    trained = build_model(resolve_settings(with_blocks))
    narrow = build_model(resolve_settings({**with_blocks, setting: 4}))
    with pytest.raises(AssertionError, match="only grow wider"):
        grow_from(narrow, trained)


def test_growing_refuses_a_model_that_differs_beyond_growing():
    without_ctc = build_model(resolve_settings({**TINY, "ctc": False}))
    with pytest.raises(AssertionError, match="unexpected"):
        grow_from(without_ctc, tiny_model())


def tiny_lm(order: int = 4) -> NGramLM:
    """A character LM over a few sentences (the tiny model's vocabulary is the real one)."""
    vocab = char_vocabulary()
    sentences = ["the cat sat", "the dog ran", "a cat ran", "it is the end"] * 5
    return NGramLM.count([encode_chars(vocab, t) for t in sentences], order=order, vocab_size=len(vocab),
                         boundaries=(vocab.stoi[" "],))  # fmt: skip


@pytest.mark.parametrize(("beam", "ctc_weight", "lm_weight"),
                         [(1, 0.0, 0.0), (3, 0.0, 0.0), (1, 0.5, 0.0), (3, 0.5, 0.0), (1, 0.0, 0.5), (3, 0.5, 0.5)])  # fmt: skip
def test_batched_decoding_equals_one_by_one(beam, ctc_weight, lm_weight):
    model = tiny_model()
    model.config.ctc_decode_weight = ctc_weight  # joint CTC/attention decoding when > 0
    model.config.lm_weight = lm_weight  # shallow fusion with the character LM when > 0
    model.attach_lm(tiny_lm())
    feats = random_features([60, 25, 90], seed=1)
    with torch.no_grad():
        memory = model.encode(model.collate(feats))
        batched = greedy_decode(model, memory, 15) if beam == 1 else beam_search(model, memory, beam, 15, alpha=0.6)
        for f, result in zip(feats, batched):
            one = model.encode(model.collate([f]))
            alone = greedy_decode(model, one, 15)[0] if beam == 1 else beam_search(model, one, beam, 15, alpha=0.6)[0]
            assert alone.tokens == result.tokens
            assert alone.score == pytest.approx(result.score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 2])
@torch.no_grad()
def test_joint_decoding_of_a_request_joining_a_running_batch_changes_nothing(beam):
    """The engine joins new requests into the running batch: CTC state of other widths (frames)
    and a fresh prefix (CTC and LM) meet rows already decoding."""
    model = tiny_model()
    model.config.ctc_decode_weight = 0.5
    model.config.lm_weight = 0.5
    model.attach_lm(tiny_lm())
    short, long = random_features([30], seed=6)[0], random_features([120], seed=7)[0]
    params = DecodeParams(max_length=12, beam_size=beam, length_penalty=0.6)

    def run(batch: DecodingBatch, results: dict, steps: int | None = None) -> None:
        done = 0
        while batch.live_sequences and (steps is None or done < steps):
            results.update({seq.tag: result for seq, result in batch.step().finished})
            done += 1

    def add(batch: DecodingBatch, features: torch.Tensor, tag: str) -> None:
        memory = model.encode(model.collate([features]))
        batch.add(memory, model.init_state(memory), [Sequence(params, int(memory.mask.sum()), tag=tag)])

    expected: dict = {}
    for tag, features in (("short", short), ("long", long)):
        alone = DecodingBatch(model, "cpu")
        add(alone, features, tag)
        run(alone, expected)
    joined, results = DecodingBatch(model, "cpu"), {}
    add(joined, short, "short")
    run(joined, results, steps=2)
    assert "short" not in results, "the short input must still be decoding when the long one joins"
    add(joined, long, "long")
    run(joined, results)
    for tag in ("short", "long"):
        assert results[tag].tokens == expected[tag].tokens, tag
        assert results[tag].score == pytest.approx(expected[tag].score, abs=1e-4)


def test_joint_ctc_decoding_changes_the_scores_and_round_trips_in_the_config():
    model = tiny_model()
    feats = random_features([60, 25], seed=4)
    with torch.no_grad():
        plain = greedy_decode(model, model.encode(model.collate(feats)), 15)
        model.config.ctc_decode_weight = 0.7
        memory = model.encode(model.collate(feats))
        joint = greedy_decode(model, memory, 15)
    assert [r.score for r in plain] != [r.score for r in joint]
    assert SpeechConfig.from_dict(model.config.to_dict()).ctc_decode_weight == 0.7
    assert SpeechConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "ctc_decode_weight"}).ctc_decode_weight == 0.0
    with pytest.raises(AssertionError, match="ctc_decode_weight"):
        SpeechConfig.from_dict({**model.config.to_dict(), "ctc_decode_weight": 1.5})


def test_lm_fusion_changes_the_scores_round_trips_and_loads_with_the_artifact(tmp_path):
    model = tiny_model()
    feats = random_features([60, 25], seed=4)
    lm = tiny_lm()
    with torch.no_grad():
        memory = model.encode(model.collate(feats))
        plain = greedy_decode(model, memory, 15)
        model.attach_lm(lm)  # attached, weight 0: nothing changes
        assert [r.tokens for r in greedy_decode(model, memory, 15)] == [r.tokens for r in plain]
        model.config.lm_weight = 2.0
        fused = greedy_decode(model, model.encode(model.collate(feats)), 15)
    assert [r.score for r in plain] != [r.score for r in fused]
    assert SpeechConfig.from_dict(model.config.to_dict()).lm_weight == 2.0
    assert SpeechConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "lm_weight"}).lm_weight == 0.0
    save_speech_model(model, tmp_path, training={})
    assert load_speech_model(tmp_path).lm is None  # no lm files: no LM, whatever the weight
    lm.save(tmp_path)
    loaded = load_speech_model(tmp_path)
    assert loaded.lm is not None and loaded.config.lm_weight == 2.0
    with torch.no_grad():
        again = greedy_decode(loaded, loaded.encode(loaded.collate(feats)), 15)
    assert [r.tokens for r in again] == [r.tokens for r in fused]


def test_keep_best_keeps_the_newest_copies_and_they_average(tmp_path):
    model = tiny_model()
    for step in (400, 800, 1200):  # numbered, not lexical, order: step-1200 is the newest
        with torch.no_grad():
            model.decoder.embed.weight.fill_(step)
        save_speech_model(model, tmp_path, training={"steps": step})
        keep_checkpoint(tmp_path, step, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-1200", "step-800"]
    assert load_speech_model(tmp_path / "checkpoints" / "step-800").decoder.embed.weight.unique().tolist() == [800.0]
    mean = load_speech_model(write_average([tmp_path / "checkpoints" / k for k in kept], tmp_path / "mean"))
    assert mean.decoder.embed.weight.unique().tolist() == [1000.0]


def test_the_speech_lm_holds_out_val_and_test_sentences():
    sizes = {"train": 30, "val": 5, "test": 5}
    texts = data.split_texts(sizes)
    held_out = set(texts["val"]) | set(texts["test"])
    made = list(speech_lm.corpus(300, held_out))
    assert len(made) == 300 and not held_out & set(made)
    lm = speech_lm.build_lm(300, order=6, sizes=sizes)
    assert lm.config.order == 6 and lm.config.boundaries == (char_vocabulary().stoi[" "],)
    assert lm.config.tokens_counted == sum(len(s) + 1 for s in made)  # every character and the end


def test_loss_has_ctc_and_cross_entropy_and_trains():
    model = tiny_model().train()
    feats = random_features([80, 64], seed=2)
    vocab = model.vocab
    targets = pad_targets([encode_chars(vocab, "hi there"), encode_chars(vocab, "yo")], vocab.pad_id)
    batch = model.collate(feats)
    loss, parts = speech_loss(model, batch, targets, 0.1, 0.3)
    assert set(parts) == {"ce", "ctc"} and torch.isfinite(loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(15):
        optimizer.zero_grad()
        loss, _ = speech_loss(model, batch, targets, 0.0, 0.3)
        loss.backward()
        optimizer.step()
    assert loss.item() < first, "the loss should fall when fitting two utterances"


def test_memory_lengths_match_the_listener():
    model = tiny_model()
    lengths = [83, 40, 17, 1, 8, 9]
    with torch.no_grad():
        memory = model.encode(model.collate(random_features(lengths)))
    assert memory_lengths(torch.tensor(lengths)).tolist() == memory.mask.sum(dim=1).tolist()


def test_guided_attention_penalises_off_diagonal_weights_only_on_real_steps():
    steps, positions = torch.tensor([4, 2]), torch.tensor([8, 6])
    diagonal = torch.zeros(2, 4, 8)
    for u in range(4):
        diagonal[0, u, 2 * u + 1] = 1.0  # row 0: 4 steps over 8 positions, on the diagonal
    for u in range(2):
        diagonal[1, u, 3 * u + 1] = 1.0  # row 1: 2 real steps over 6 positions
    flipped = diagonal.clone()
    flipped[0] = diagonal[0].flip(0)  # same weights, read backwards
    low = guided_attention_loss(diagonal, steps, positions, 0.2)
    high = guided_attention_loss(flipped, steps, positions, 0.2)
    assert low < 0.05 and high > 0.5, (low, high)
    # Weights on padded steps (row 1, steps 2 and 3) do not count.
    padded = diagonal.clone()
    padded[1, 2:, 5] = 1.0
    torch.testing.assert_close(guided_attention_loss(padded, steps, positions, 0.2), low)


def test_guided_attention_follows_the_speech_after_added_silence():
    steps, positions = torch.tensor([4]), torch.tensor([8])
    diagonal = torch.zeros(1, 4, 8)
    for u in range(4):
        diagonal[0, u, 2 * u + 1] = 1.0
    shifted = torch.cat([torch.zeros(1, 4, 5), diagonal, torch.zeros(1, 4, 3)], dim=2)  # 5 positions of silence first
    aligned = guided_attention_loss(shifted, steps, positions.float(), 0.2, starts=torch.tensor([5.0]))
    torch.testing.assert_close(aligned, guided_attention_loss(diagonal, steps, positions, 0.2))
    assert guided_attention_loss(shifted, steps, torch.tensor([16]), 0.2) > aligned + 0.15  # the guide without the span


def test_loss_adds_the_guide_when_asked_and_it_trains_the_attention():
    model = tiny_model().train()
    feats = random_features([80, 64], seed=2)
    vocab = model.vocab
    targets = pad_targets([encode_chars(vocab, "hi there"), encode_chars(vocab, "yo")], vocab.pad_id)
    batch = model.collate(feats)
    _, parts = speech_loss(model, batch, targets, 0.0, 0.0, guide_weight=1.0)
    assert set(parts) == {"ce", "guide"}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = parts["guide"]
    for _ in range(15):
        optimizer.zero_grad()
        loss, parts = speech_loss(model, batch, targets, 0.0, 0.0, guide_weight=5.0)
        loss.backward()
        optimizer.step()
    assert parts["guide"] < first, "the guided-attention loss should fall"


def test_ctc_pretraining_loss_trains_the_listener_only():
    model = tiny_model().train()
    vocab = model.vocab
    targets = pad_targets([encode_chars(vocab, "hi there"), encode_chars(vocab, "yo")], vocab.pad_id)
    loss = ctc_loss(model, model.collate(random_features([80, 64], seed=3)), targets)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in model.decoder.parameters()), "the speller must not be touched"
    # CTC sits on the 4x layer: everything below it learns (the 8x BiLSTM waits for the speller).
    below = [*model.listener.conv1.parameters(), *model.listener.lstm1.parameters(), *model.ctc.parameters()]
    assert all(p.grad is not None for p in below)


def test_length_batches_cover_everything_and_curriculum_goes_short_to_long():
    lengths = [random.Random(i).randint(50, 500) for i in range(103)]
    for shortest_first in (False, True):
        batches = length_batches(lengths, 8, random.Random(0), shortest_first)
        assert sorted(i for b in batches for i in b) == list(range(103))
    means = [sum(lengths[i] for i in b) / len(b) for b in length_batches(lengths, 8, random.Random(0), True)]
    assert means[0] < means[len(means) // 2] < means[-1]


def test_spec_augment_masks_bands_and_frames():
    feats = torch.ones(200, 80)
    settings = resolve_settings({"freq_mask_width": 20, "time_mask_ratio": 0.1})
    masked = [spec_augment(feats, random.Random(seed), settings) for seed in range(5)]
    assert all(m.shape == feats.shape for m in masked)
    assert any(bool((m == 0).all(dim=0).any()) for m in masked), "no mel band was masked"
    assert any(bool((m == 0).all(dim=1).any()) for m in masked), "no time span was masked"
    assert torch.all(feats == 1), "the input must not be modified"


def test_frequency_warp_moves_formants_and_keeps_the_axis():
    # a formant-like bump at band 20 whose loudness follows `voice` over time, over faint noise:
    # after per-band normalisation the bands that carry it are those that follow `voice`
    gen = torch.Generator().manual_seed(0)
    frames, bands = 80, 40
    voice = torch.randn(frames, 1, generator=gen)
    bump = torch.exp(-((torch.arange(bands, dtype=torch.float32) - 20) ** 2) / 4.0)
    feats = normalize_utterance(voice * bump + 0.05 * torch.randn(frames, bands, generator=gen))

    def formant_band(f: torch.Tensor) -> int:
        return int((f * voice).mean(dim=0).argmax())  # the band most correlated with the voice

    assert formant_band(feats) == 20
    assert torch.allclose(warp_frequencies(feats, 1.0), feats, atol=1e-5)
    # band b takes the value at b * factor: > 1 moves the bump down, < 1 up
    for factor in (1.1, 0.9):  # (a band's worth of slack: neighbours of the peak correlate nearly as well)
        assert abs(formant_band(warp_frequencies(feats, factor)) - 20 / factor) <= 1
    assert formant_band(warp_frequencies(feats, 1.15)) < 20 < formant_band(warp_frequencies(feats, 0.85))
    for factor in (0.85, 0.9, 1.1, 1.15):
        warped = warp_frequencies(feats, factor)
        assert warped.shape == feats.shape and torch.isfinite(warped).all()
        assert torch.allclose(warped.mean(dim=0), torch.zeros(bands), atol=1e-4)  # normalised like served features
        assert torch.allclose(warped[:, -1], feats[:, -1], atol=1e-4)  # the top band stays where it is


def test_augment_without_warp_or_padding_is_spec_augment_alone():
    # freq_warp and edge_pad_seconds 0 draw nothing from the rng, so recipes without them
    # shuffle and mask as before
    feats = torch.randn(120, 40)
    settings = resolve_settings({})
    assert settings["freq_warp"] == 0 and settings["edge_pad_seconds"] == 0
    augmented, lead = augment(feats, random.Random(3), settings)
    assert torch.equal(augmented, spec_augment(feats, random.Random(3), settings)) and lead == 0
    warped, _ = augment(feats, random.Random(3), {**settings, "freq_warp": 0.1, "freq_masks": 0, "time_masks": 0})
    assert warped.shape == feats.shape and not torch.allclose(warped, feats)


def test_pad_edges_is_padding_the_raw_recording_with_its_own_background():
    raw = torch.randn(60, 8) * 3 + 5  # un-normalised log-mels; the last 10 frames are "background"
    padded = pad_edges(normalize_utterance(raw), 7, 4, random.Random(0))
    assert padded.shape == (71, 8)
    # Normalising the normalised clip again after padding = padding the raw clip, then normalising.
    quiet_raw = raw[-10:]
    again = pad_edges(normalize_utterance(raw), 7, 4, random.Random(0))
    torch.testing.assert_close(padded, again)  # the same draw from the same rng
    drawn = random.Random(0)
    picks = [drawn.randrange(10) for _ in range(11)]
    expected = normalize_utterance(torch.cat([quiet_raw[picks[:7]], raw, quiet_raw[picks[7:]]]))
    torch.testing.assert_close(padded, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(pad_edges(normalize_utterance(raw), 0, 0, random.Random(0)), normalize_utterance(normalize_utterance(raw)))


def test_pad_edges_keeps_speech_only_statistics():
    # Features normalised on the speech alone (stats_margin_s) keep their values when
    # background is added outside the speech: the frames are padded, not normalised again.
    feats = normalize_utterance(torch.randn(60, 8) * 3 + 5)
    padded = pad_edges(feats, 7, 4, random.Random(0), renormalise=False)
    assert padded.shape == (71, 8)
    assert torch.equal(padded[7:67], feats)
    tail = feats[-10:]
    assert all(any(torch.equal(row, quiet) for quiet in tail) for row in torch.cat([padded[:7], padded[67:]]))
    settings = {**resolve_settings({}), "edge_pad_seconds": 0.5, "edge_pad_prob": 1.0, "freq_masks": 0, "time_masks": 0}
    augmented, lead = augment(feats, random.Random(5), {**settings, "stats_margin_s": 0.2})
    assert torch.equal(augmented[lead : lead + 60], feats)
    renormalised, lead = augment(feats, random.Random(5), settings)
    assert not torch.equal(renormalised[lead : lead + 60], feats)


def test_join_pairs_makes_two_sentence_recordings_with_background_between():
    vocab = char_vocabulary()
    space = vocab.stoi[" "]
    clips = random_features([30, 20, 25, 12, 40])
    texts = ["ten cats", "a dog", "", "so", "last one"]
    examples = [(x, encode_chars(vocab, t)) for x, t in zip(clips, texts)]
    joined = join_pairs(examples, random.Random(3), space, most_gap=6)
    assert len(joined) == 3
    assert [decode_chars(vocab, ids) for _, ids in joined] == ["ten cats a dog", "so", "last one"]
    assert joined[0][1] == encode_chars(vocab, "ten cats a dog")
    assert joined[1][1] == encode_chars(vocab, "so")  # a silent clip adds no space
    for (x, _), first, second in [(joined[0], clips[0], clips[1]), (joined[1], clips[2], clips[3])]:
        gap = x.shape[0] - first.shape[0] - second.shape[0]
        assert 0 <= gap <= 6
        assert torch.equal(x[: first.shape[0]], first) and torch.equal(x[x.shape[0] - second.shape[0] :], second)
        # the gap is the first clip's own background: frames from its tail
        tail = first[-10:]
        assert all(any(torch.equal(row, quiet) for quiet in tail) for row in x[first.shape[0] : first.shape[0] + gap])
    assert joined[2][0] is clips[4]  # the odd one out stays as it was
    gaps = {join_pairs(examples[:2], random.Random(seed), space, most_gap=6)[0][0].shape[0] - 50 for seed in range(40)}
    assert len(gaps) > 3 and min(gaps) >= 0 and max(gaps) <= 6


def test_augment_pads_some_clips_and_says_where_the_speech_starts():
    feats = normalize_utterance(torch.randn(100, 40))
    settings = {**resolve_settings({}), "edge_pad_seconds": 0.5, "edge_pad_prob": 1.0, "freq_masks": 0, "time_masks": 0}
    for seed in range(5):
        out, lead = augment(feats, random.Random(seed), settings)
        assert 0 <= lead <= 50 and 100 + lead <= out.shape[0] <= 200
        torch.testing.assert_close(normalize_utterance(out[lead : lead + 100]), feats, rtol=1e-3, atol=1e-3)
    never = {**settings, "edge_pad_prob": 0.0}
    assert all(augment(feats, random.Random(seed), never)[0].shape == feats.shape for seed in range(5))


def test_preprocess_resamples_and_downmixes_any_upload():
    model = tiny_model()
    wav = encode_audio("wav", "pcm_s16le", stereo_sine(44100, 0.5), 44100)
    feats = SpeechTask().preprocess(wav, "audio/wav", model, InputLimits())
    assert feats.shape == (frames_for(8000, model.config.features), 16)
    assert SpeechTask().input_cost(feats) == feats.shape[0]
    with pytest.raises(InputError):
        audio_bytes_to_features(b"RIFF0000WAVEjunk", "audio/wav", model.config.features, InputLimits())
    with pytest.raises(PayloadTooLarge, match="0.5"):
        audio_bytes_to_features(wav, "audio/wav", model.config.features, InputLimits(max_duration_s=0.2))


def test_v2_waveform_becomes_a_float_wav_at_its_rate():
    config = FeatureConfig(n_mels=40)
    wave = (0.5 * np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050)).astype(np.float32)  # 1 s at 22.05 kHz
    task = SpeechTask()
    audio, mime = task.v2_input("WAVEFORM", wave, {"sample_rate": 22050})
    decoded = audio_bytes_to_features(audio, mime, config, InputLimits())
    assert decoded.shape == (frames_for(16000, config), 40)  # resampled to 16 kHz
    from mmserve.plugins.media import decode_audio

    samples = decode_audio(audio, mime, sample_rate=22050, max_upload_bytes=10**7, max_duration_s=60)
    np.testing.assert_allclose(samples.numpy(), wave, atol=1e-6)  # float samples kept exactly
    assert len(waveform_to_wav(wave[:160], None, 16000)) == 44 + 160 * 4  # default rate, 32-bit samples


@pytest.mark.parametrize(
    "value, parameters",
    [(np.zeros((2, 10), np.float32), {}), (np.zeros(0, np.float32), {}), (np.array([0.0, np.nan], np.float32), {}),
     (np.zeros(10, np.float32), {"sample_rate": 0}), (np.zeros(10, np.float32), {"sample_rate": "16k"}),
     (np.zeros(10, np.float32), {"sample_rate": True})],
)  # fmt: skip
def test_v2_waveform_refuses_bad_shapes_rates_and_values(value, parameters):
    with pytest.raises(InputError):
        SpeechTask().v2_input("WAVEFORM", value, parameters)


def test_v2_waveform_over_the_duration_limit_is_413_naming_it():
    audio, mime = SpeechTask().v2_input("WAVEFORM", np.zeros(8000 * 5, np.float32), {"sample_rate": 8000})
    with pytest.raises(PayloadTooLarge, match="5.00 s"):
        audio_bytes_to_features(audio, mime, FeatureConfig(), InputLimits(max_duration_s=2.0))


def test_postprocess_gives_text_characters_and_word_times():
    model = tiny_model()
    vocab = model.vocab
    tokens = encode_chars(vocab, "go on")[1:-1]
    attention = torch.zeros(len(tokens), 10)
    for i, position in enumerate([1, 2, 3, 6, 7]):  # "g" "o" " " "o" "n"
        attention[i, position] = 1.0
    output = SpeechTask().postprocess(DecodeResult(tokens, -1.5, attention), model, include_attention=False)
    assert output["text"] == "go on" and output["tokens"] == list("go on")
    assert [w["word"] for w in output["words"]] == ["go", "on"]
    assert output["words"][0] == {"word": "go", "start": pytest.approx(0.08), "end": pytest.approx(0.24)}
    assert output["words"][1]["start"] == pytest.approx(0.48)
    assert output["duration"] == pytest.approx(0.8)
    assert word_times(DecodeResult([], 0.0, torch.zeros(0, 4)), model, 0.08) == []


def test_splits_hold_out_voices_and_sentences():
    train, test = set(data.voices("train")), set(data.voices("test"))
    assert train and test and not train & test
    assert all(v.split("+")[0] in data.HELD_OUT_ACCENTS or v.split("+")[1] in data.HELD_OUT_VARIANTS for v in test)
    texts = data.split_texts({"train": 300, "val": 20, "test": 30})
    assert not set(texts["test"]) & set(texts["train"]) and not set(texts["val"]) & set(texts["train"])
    assert all(t == normalize_text(t) and t for t in texts["train"])
    assert len(set(texts["train"])) == 300


def test_voice_novelty_names_what_training_never_heard():
    assert {data.voice_novelty(v) for v in data.voices("train")} == {"seen"}
    assert {data.voice_novelty(v) for v in data.voices("test")} == {
        "new_accent",
        "new_variant",
        "new_accent_and_variant",
    }
    assert data.voice_novelty("en-us-nyc+m1") == "new_accent"
    assert data.voice_novelty("en-us+zac") == "new_variant"
    assert data.voice_novelty("en-gb-x-gbcwmd+zac") == "new_accent_and_variant"


def test_recording_condition_names_the_harshest_augmentation():
    assert data.recording_condition({"reverb": True, "telephone": True, "snr_db": 5.0}) == "telephone"
    assert data.recording_condition({"reverb": True, "snr_db": 5.0}) == "reverberant"
    assert data.recording_condition({"snr_db": 19.5}) == "noisy"
    assert data.recording_condition({"snr_db": 20.0}) == "clean"
    assert data.recording_condition({}) == "clean"
    # ... read from the metadata data.augment really writes: every condition, each one right
    wave = np.sin(np.linspace(0, 400, 3200)).astype(np.float32)
    infos = [data.augment(wave, np.random.default_rng(seed))[1] for seed in range(40)]
    assert {data.recording_condition(info) for info in infos} == {"clean", "noisy", "reverberant", "telephone"}
    assert all(data.recording_condition(info) == "clean" for info in infos if not info.get("reverb")
               and not info.get("telephone") and info.get("snr_db", 30.0) >= 20)  # fmt: skip


def test_error_rates_by_group_scores_each_group_alone():
    refs = ["one two", "three four", "five six", "seven"]
    hyps = ["one two", "three for", "five six", "eleven"]
    groups = ["a", "b", "a", "b"]
    by_group = error_rates_by_group(refs, hyps, groups)
    assert by_group["a"] == {"wer": 0.0, "cer": 0.0, "clips": 2.0}
    assert by_group["b"]["clips"] == 2.0
    assert by_group["b"]["wer"] == pytest.approx(error_rates(["three four", "seven"], ["three for", "eleven"])["wer"])
    assert by_group["b"]["wer"] == pytest.approx(2 / 3)


def test_augmentation_keeps_length_and_stays_in_range():
    rng = np.random.default_rng(0)
    wave = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300).astype(np.float32) * 0.5
    for _ in range(6):
        out, info = data.augment(wave, rng)
        assert out.shape == wave.shape and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    noisy = data.add_noise(np.ones(16000, np.float32), np.random.default_rng(1), 10.0) - 1.0
    assert 10 * np.log10(1.0 / np.mean(noisy**2)) == pytest.approx(10.0, abs=0.5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_clip_is_speech_of_plausible_length():
    wave, info = data.make_clip("test", 0, "one two three four")
    assert info["voice"] in data.voices("test")
    assert 0.5 < len(wave) / data.SAMPLE_RATE < 5.0
    assert np.abs(wave).max() > 0.05


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_every_training_accent_speaks_with_the_speaker_variant_it_names():
    # espeak-ng drops the variant of "en-gb+<variant>": the voices are given to it by another name.
    assert data.espeak_voice_name("en-gb+m3") == "en+m3" and data.espeak_voice_name("en-us+m3") == "en-us+m3"
    text = "this is a test of the voice"
    for accent in data.TRAIN_ACCENTS + data.HELD_OUT_ACCENTS:
        m3, f2 = (data.synthesize(text, data.Voice(f"{accent}+{variant}", 160, 50, 100)) for variant in ("m3", "f2"))
        assert len(m3) != len(f2) or not np.allclose(m3, f2, atol=1e-3), f"{accent}: m3 and f2 sound the same"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_extra_training_clips_use_training_voices_and_leave_val_and_test_alone(tmp_path):
    sizes = {"train": 30, "val": 5, "test": 5}
    texts = data.split_texts(sizes)
    folders = data.build_extra_train(tmp_path, sizes, 6, workers=2, progress=False, shard_clips=4)
    assert [f.name for f in folders] == ["0000000-0000004", "0000004-0000006"]
    clips = [data.SpeechClips(f) for f in folders]
    spoken = [c.text(i) for c in clips for i in range(len(c))]
    assert spoken == data.extra_sentences(sizes, 6) and len(set(spoken)) == 6
    assert {m["voice"] for c in clips for m in c.clips} <= set(data.voices("train"))
    assert not set(spoken) & (set(texts["val"]) | set(texts["test"]))
    assert all(0.3 < len(c.wave(i)) / data.SAMPLE_RATE < 10 for c in clips for i in range(len(c)))
    written = (folders[1] / "waves.npy").stat().st_mtime_ns
    assert data.build_extra_train(tmp_path, sizes, 6, workers=2, progress=False, shard_clips=4) == folders
    assert (folders[1] / "waves.npy").stat().st_mtime_ns == written  # cached, not generated again


def test_a_larger_extra_count_keeps_the_smaller_ones_sentences_and_shards():
    sizes = {"train": 30, "val": 5, "test": 5}
    assert data.extra_sentences(sizes, 40)[:25] == data.extra_sentences(sizes, 25)
    assert data.extra_shards(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert data.extra_shards(40, 10)[:2] == data.extra_shards(25, 10)[:2]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_split_written_in_shards_holds_the_clips_written_in_one_piece(tmp_path):
    sizes = {"train": 30, "val": 5, "test": 5}
    sentences = data.extra_sentences(sizes, 5)
    whole = data.SpeechClips(data.build_split(tmp_path, "train-extra", sentences, 2, False, "whole"))
    shards = data.build_extra_train(tmp_path, sizes, 5, workers=2, progress=False, shard_clips=2)
    pieces = [(c, i) for c in map(data.SpeechClips, shards) for i in range(len(c))]
    for k, (clips, i) in enumerate(pieces):
        assert clips.clips[i]["voice"] == whole.clips[k]["voice"] and clips.text(i) == whole.text(k)
        # torch's thread count may move a resampled sample by one int16 step, no more
        np.testing.assert_allclose(clips.wave(i), whole.wave(k), atol=1.5 / 32768)


def test_pad_with_background_adds_noise_at_the_clips_floor_both_sides():
    rng = np.random.default_rng(0)
    speech = np.concatenate([rng.standard_normal(8000) * 0.3, rng.standard_normal(8000) * 0.01]).astype(np.float32)
    padded = pad_with_background(speech, 0.25, seed=1)
    assert len(padded) == len(speech) + 8000 and np.array_equal(padded[4000:-4000], speech)
    floor = np.sqrt(np.mean(np.square(padded[:4000])))
    assert 0.005 < floor < 0.02  # the quiet half's level, not the loud half's
    assert np.array_equal(pad_with_background(speech, 0.25, seed=1), padded)  # seeded


def test_background_has_the_spectrum_of_the_clips_floor():
    # A telephone-band clip: speech and floor both band-limited to 300-3400 Hz. Its background
    # must be too (white noise would put half its energy above 3.4 kHz).
    rng = np.random.default_rng(0)
    loud, quiet = (data.telephone_band(rng.standard_normal(16000).astype(np.float32)) * level for level in (0.3, 0.01))
    clip = np.concatenate([loud, quiet]).astype(np.float32)
    noise = background(clip, 1.0, np.random.default_rng(1))
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / 16000)
    assert power[freqs > 4000].sum() < 0.02 * power.sum()
    floor = np.sqrt(np.mean(np.square(quiet)))
    assert abs(np.sqrt(np.mean(np.square(noise))) / floor - 1) < 0.2  # the floor's level
    assert background(np.zeros(0, np.float32), 0.1, np.random.default_rng(1)).shape == (1600,)


def test_silence_padded_pads_each_clip_seeded_by_its_index():
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(4000).astype(np.float32) * 0.1 for _ in range(3)]
    padded = silence_padded(waves)
    for i, (wave, out) in enumerate(zip(waves, padded)):
        assert np.array_equal(out, pad_with_background(wave, SILENCE_PAD_S, seed=i))
    assert not np.array_equal(padded[0][:4000], silence_padded([waves[1]])[0][:4000])  # a clip's background is its own


def test_long_recordings_join_consecutive_clips_with_pauses():
    class Clips:
        def __len__(self):
            return 9

        def wave(self, i):
            return np.full(1600 * (i + 1), 0.1 * (i + 1), np.float32)

        def text(self, i):
            return f"clip {i}"

    recordings = long_recordings(Clips(), 4)
    assert [t for _, t in recordings] == ["clip 0 clip 1 clip 2 clip 3", "clip 4 clip 5 clip 6 clip 7"]  # the 9th left out
    speech = sum(1600 * (i + 1) for i in range(4))
    assert speech + 3 * 1600 <= len(recordings[0][0]) <= speech + 3 * 9600  # three pauses of 0.1-0.6 s
