"""The shared neural blocks: attention, the decoder and the decoding strategies."""

from __future__ import annotations

import math

import pytest
import torch

from mmserve.plugins.nn import (
    AttentionDecoder,
    DecoderConfig,
    EncoderDecoder,
    Memory,
    beam_search,
    greedy_decode,
    sample_decode,
)
from mmserve.plugins.nn.attention import build_attention
from mmserve.plugins.nn.heads import CategoricalHead, choose_next_tokens

ATTENTIONS = ["bahdanau", "luong_dot", "luong_general"]
CELLS = ["rnn", "gru", "lstm"]


def _padded_memory(lengths: list[int], dim: int = 16, seed: int = 0) -> Memory:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(len(lengths), max(lengths), dim, generator=gen)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
        values[i, n:] = 0.0  # what Memory.concat pads with
    return Memory(values=values, mask=mask)


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_ignores_padding_and_sums_to_one(kind):
    memory = _padded_memory([5, 2, 7], dim=16)
    attention = build_attention(kind, query_dim=16, value_dim=16, attn_dim=8)
    query = torch.randn(3, 16)
    context, weights = attention(query, memory.values, memory.mask)
    assert weights.shape == (3, 7) and context.shape == (3, 16)
    assert torch.all(weights[~memory.mask] == 0), "padded positions received attention"
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    # Changing what sits in padded positions must not change anything.
    noisy = memory.values.clone()
    noisy[~memory.mask] = 100.0
    context2, weights2 = attention(query, noisy, memory.mask)
    torch.testing.assert_close(weights, weights2)
    torch.testing.assert_close(context, context2)


class TinyModel(EncoderDecoder):
    """Random-weight encoder-decoder over precomputed memories, for decoding tests."""

    def __init__(self, cell: str = "lstm", attention: str = "bahdanau", layers: int = 1, vocab: int = 11):
        super().__init__()
        torch.manual_seed(0)
        config = DecoderConfig(
            vocab_size=vocab, memory_dim=16, embed_dim=8, hidden_dim=16, attn_dim=8, cell=cell,
            num_layers=layers, dropout=0.0, attention=attention, gate_context=attention == "bahdanau",
        )
        self.decoder = AttentionDecoder(config).eval()
        self.head = CategoricalHead(bos_id=1, eos_id=2)

    def encode(self, batch: Memory) -> Memory:
        return self.decoder.prepare_memory(batch.values, batch.mask)

    def init_state(self, memory):
        return self.decoder.init_state(memory)

    def step(self, prev, state, memory):
        return self.decoder.step(prev, state, memory)


def _rows(memory: Memory) -> list[Memory]:
    rows = []
    for i in range(memory.batch_size):
        n = int(memory.mask[i].sum())
        rows.append(Memory(memory.values[i : i + 1, :n], memory.mask[i : i + 1, :n]))
    return rows


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_batched_greedy_equals_one_by_one(cell, attention):
    model = TinyModel(cell, attention, layers=2)
    raw = _padded_memory([6, 3, 9, 1], seed=1)
    batched = greedy_decode(model, model.encode(raw), max_length=12)
    for row, result in zip(_rows(raw), batched):
        alone = greedy_decode(model, model.encode(row), max_length=12)[0]
        assert alone.tokens == result.tokens
        assert alone.score == pytest.approx(result.score, abs=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_beam_of_one_equals_greedy(cell):
    model = TinyModel(cell)
    memory = model.encode(_padded_memory([4, 8, 2], seed=2))
    greedy = greedy_decode(model, memory, max_length=10)
    beam = beam_search(model, memory, beam_size=1, max_length=10)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]
    for g, b in zip(greedy, beam):
        assert g.score == pytest.approx(b.score, abs=1e-4)


class TableModel(EncoderDecoder):
    """Next-token distributions from a table indexed by the previous token, so the best
    sequence is known by hand: greedy takes A (0.6) and then ends (0.34), 0.6 * 0.34 = 0.204;
    beam search finds B (0.4) then <eos> (0.99), 0.396."""

    BOS, EOS, A, B = 1, 2, 3, 4

    def __init__(self) -> None:
        super().__init__()
        table = torch.full((5, 5), 1e-6)
        table[self.BOS, [self.A, self.B]] = torch.tensor([0.6, 0.4])
        table[self.A, [self.EOS, self.A, self.B]] = torch.tensor([0.34, 0.33, 0.33])
        table[self.B, [self.EOS, self.A]] = torch.tensor([0.99, 0.01])
        self.register_buffer("log_table", table.log())
        self.head = CategoricalHead(self.BOS, self.EOS)

    def encode(self, batch):
        return batch

    def init_state(self, memory):
        return {"dummy": torch.zeros(memory.batch_size, 1)}

    def step(self, prev, state, memory):
        return self.log_table[prev], state, memory.mask.float() / memory.mask.sum(1, keepdim=True)


def test_beam_search_beats_greedy_where_greedy_is_wrong():
    model = TableModel()
    memory = _padded_memory([3, 2])
    greedy = greedy_decode(model, memory, max_length=6)
    beam = beam_search(model, memory, beam_size=2, max_length=6)
    assert [g.tokens for g in greedy] == [[TableModel.A]] * 2
    assert [b.tokens for b in beam] == [[TableModel.B]] * 2
    assert all(g.finished and b.finished for g, b in zip(greedy, beam))
    for g, b in zip(greedy, beam):
        assert g.score == pytest.approx(math.log(0.6 * 0.34), abs=1e-3)
        assert b.score == pytest.approx(math.log(0.4 * 0.99), abs=1e-3)


def test_batched_beam_equals_one_by_one():
    model = TinyModel("lstm", "bahdanau", vocab=9)
    raw = _padded_memory([3, 7, 5], seed=4)
    batched = beam_search(model, model.encode(raw), beam_size=3, max_length=10, alpha=0.6)
    for row, result in zip(_rows(raw), batched):
        alone = beam_search(model, model.encode(row), beam_size=3, max_length=10, alpha=0.6)[0]
        assert alone.tokens == result.tokens


def test_attention_rows_follow_tokens():
    model = TinyModel()
    memory = model.encode(_padded_memory([4, 6], seed=5))
    for result in greedy_decode(model, memory, max_length=6):
        assert result.attention.shape[0] == len(result.tokens)


def test_top_k_one_is_greedy_and_top_p_keeps_the_mode():
    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0], [2.0, 0.0, 1.9, 0.5]])
    greedy = logits.argmax(dim=1)
    ones = torch.ones(2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens, _ = choose_next_tokens(logits, ones, torch.tensor([1, 1]), ones, gen)
        assert torch.equal(tokens, greedy)
        tokens, _ = choose_next_tokens(logits, ones, torch.tensor([0, 0]), torch.full((2,), 1e-6), gen)
        assert torch.equal(tokens, greedy)


def test_sampling_follows_temperature():
    logits = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    n = logits.shape[0]
    cold, _ = choose_next_tokens(logits, torch.full((n,), 0.1), torch.zeros(n, dtype=torch.long), torch.ones(n), gen)
    hot, _ = choose_next_tokens(logits, torch.full((n,), 10.0), torch.zeros(n, dtype=torch.long), torch.ones(n), gen)
    assert (cold == 0).float().mean() > 0.99
    assert 0.28 < (hot == 0).float().mean() < 0.42  # close to uniform


def test_sample_decode_runs_and_respects_max_length():
    model = TinyModel()
    memory = model.encode(_padded_memory([3, 5], seed=6))
    results = sample_decode(model, memory, max_length=4, temperature=1.5, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert all(len(r.tokens) <= 4 for r in results)


def test_memory_concat_pads_and_masks():
    a, b = _padded_memory([2]), _padded_memory([5, 3])
    joined = Memory.concat([a, b])
    assert joined.values.shape == (3, 5, 16)
    assert joined.mask.sum(dim=1).tolist() == [2, 5, 3]
    assert torch.all(joined.values[0, 2:] == 0)


def test_teacher_forcing_matches_step_by_step():
    model = TinyModel("gru", "luong_general")
    memory = model.encode(_padded_memory([4, 6], seed=7))
    inputs = torch.tensor([[1, 4, 5, 6], [1, 7, 3, 2]])
    logits, attention = model.decoder.forward_teacher(memory, inputs)
    state = model.init_state(memory)
    for t in range(inputs.shape[1]):
        step_logits, state, weights = model.step(inputs[:, t], state, memory)
        torch.testing.assert_close(step_logits, logits[:, t])
        torch.testing.assert_close(weights, attention[:, t])


def test_memory_trim_drops_padding_no_row_uses():
    joined = Memory.concat([_padded_memory([2]), _padded_memory([7]), _padded_memory([3])])
    assert joined.values.shape[1] == 7
    trimmed = joined.select(torch.tensor([0, 2])).trim()
    assert trimmed.values.shape == (2, 3, 16) and trimmed.mask.sum(dim=1).tolist() == [2, 3]
    torch.testing.assert_close(trimmed.values, joined.values[[0, 2], :3])
    assert joined.trim() is joined  # nothing to drop
