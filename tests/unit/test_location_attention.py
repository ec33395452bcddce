"""Location-aware attention (Chorowski et al. 2015) and its previous-weights state through the
decoder, the search strategies and the engine's DecodingBatch (rows joining mid-decode)."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.nn import Memory, beam_search, greedy_decode
from mmserve.plugins.nn.attention import LocationAttention, build_attention, fit_positions
from mmserve.plugins.nn.contract import concat_states
from mmserve.plugins.nn.decoding import DecodeParams, DecodingBatch, Sequence
from tests.unit.test_nn import TinyModel, _rows


def _padded_memory(lengths: list[int], dim: int = 16, seed: int = 0) -> Memory:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(len(lengths), max(lengths), dim, generator=gen)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        values[i, n:] = 0.0
    return Memory(values=values, mask=mask)


def test_location_attention_masks_padding_and_sums_to_one():
    torch.manual_seed(0)
    memory = _padded_memory([5, 2, 7])
    attention = build_attention("location", query_dim=16, value_dim=16, attn_dim=8)
    assert isinstance(attention, LocationAttention)
    query = torch.randn(3, 16)
    prev = torch.softmax(torch.randn(3, 7), dim=1) * memory.mask
    context, weights = attention(query, memory.values, memory.mask, prev=prev)
    assert weights.shape == (3, 7) and context.shape == (3, 16)
    assert torch.all(weights[~memory.mask] == 0), "padded positions received attention"
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    noisy = memory.values.clone()
    noisy[~memory.mask] = 100.0
    _, weights2 = attention(query, noisy, memory.mask, prev=prev)
    torch.testing.assert_close(weights, weights2)


def test_location_attention_follows_the_previous_alignment():
    torch.manual_seed(1)
    memory = _padded_memory([9])
    attention = LocationAttention(16, 16, 8)
    query = torch.randn(1, 16)
    early = torch.zeros(1, 9)
    early[0, 1] = 1.0
    late = torch.zeros(1, 9)
    late[0, 7] = 1.0
    _, w_early = attention(query, memory.values, memory.mask, prev=early)
    _, w_late = attention(query, memory.values, memory.mask, prev=late)
    assert not torch.allclose(w_early, w_late), "the previous weights must change the scores"


def test_fit_positions_pads_and_crops():
    x = torch.arange(6.0).view(2, 3)
    assert fit_positions(x, 5).tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]
    assert fit_positions(x, 2).tolist() == [[0, 1], [3, 4]]


def test_concat_states_pads_per_position_tensors():
    a = {"h": torch.ones(1, 1, 4), "attn": torch.full((1, 3), 0.5)}
    b = {"h": torch.zeros(2, 1, 4), "attn": torch.full((2, 6), 0.25)}
    joined = concat_states([a, b])
    assert joined["h"].shape == (3, 1, 4)
    assert joined["attn"].shape == (3, 6)
    assert joined["attn"][0].tolist() == [0.5, 0.5, 0.5, 0, 0, 0]


class LocationModel(TinyModel):
    """test_nn's TinyModel with location-aware attention."""

    def __init__(self, vocab: int = 11):
        super().__init__("lstm", "location", vocab=vocab)
        # A strong bias away from <eos> so sequences run long enough to exercise the state.
        with torch.no_grad():
            self.decoder.out.bias[2] = -3.0


def test_location_state_is_uniform_over_real_positions():
    model = LocationModel()
    state = model.init_state(model.encode(_padded_memory([4, 2])))
    assert state["attn"][0].tolist() == pytest.approx([0.25] * 4)
    assert state["attn"][1].tolist() == pytest.approx([0.5, 0.5, 0, 0])


@pytest.mark.parametrize("beam", [1, 3])
def test_batched_decoding_equals_one_by_one(beam):
    model = LocationModel()
    raw = _padded_memory([6, 3, 9, 1], seed=1)
    if beam == 1:
        batched = greedy_decode(model, model.encode(raw), max_length=12)
    else:
        batched = beam_search(model, model.encode(raw), beam, max_length=12, alpha=0.6)
    for row, result in zip(_rows(raw), batched):
        if beam == 1:
            alone = greedy_decode(model, model.encode(row), max_length=12)[0]
        else:
            alone = beam_search(model, model.encode(row), beam, max_length=12, alpha=0.6)[0]
        assert alone.tokens == result.tokens
        assert alone.score == pytest.approx(result.score, abs=1e-4)


def _run_to_end(batch: DecodingBatch, results: dict, steps: int | None = None) -> None:
    done = 0
    while batch.live_sequences and (steps is None or done < steps):
        for seq, result in batch.step().finished:
            results[seq.tag] = result
        done += 1


@pytest.mark.parametrize("beam", [1, 2])
@torch.no_grad()
def test_a_longer_input_joining_mid_decode_changes_nothing(beam):
    """The engine joins new rows into a running batch: the memory grows (Memory.concat pads
    it) and the rows already decoding carry previous weights of the old, shorter width."""
    model = LocationModel()
    short, long = _padded_memory([3], seed=4), _padded_memory([10], seed=5)
    params = DecodeParams(max_length=10, beam_size=beam, length_penalty=0.6)
    expected = {}
    for tag, raw in (("short", short), ("long", long)):
        alone = DecodingBatch(model, "cpu")
        memory = model.encode(raw)
        alone.add(memory, model.init_state(memory), [Sequence(params, int(raw.mask.sum()), tag=tag)])
        _run_to_end(alone, expected)
    joined = DecodingBatch(model, "cpu")
    results: dict = {}
    memory = model.encode(short)
    joined.add(memory, model.init_state(memory), [Sequence(params, 3, tag="short")])
    _run_to_end(joined, results, steps=2)
    assert "short" not in results, "the short input must still be decoding when the long one joins"
    memory = model.encode(long)
    joined.add(memory, model.init_state(memory), [Sequence(params, 10, tag="long")])
    _run_to_end(joined, results)
    for tag in ("short", "long"):
        assert results[tag].tokens == expected[tag].tokens, tag
        assert results[tag].score == pytest.approx(expected[tag].score, abs=1e-4)
