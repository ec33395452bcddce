"""After a failed decode step the batch is split into one batch per sequence: every sequence
then ends exactly as it would have in the shared batch, and only the one the model fails on
is dropped."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.nn import Memory, greedy_decode
from mmserve.plugins.nn.decoding import DecodeParams, DecodingBatch, LengthBuckets, Sequence
from tests.unit.test_nn import TinyModel


def _memory(lengths: list[int], seed: int = 0) -> Memory:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(len(lengths), max(lengths), 16, generator=gen)
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return Memory(values=values * mask.unsqueeze(-1), mask=mask)


def _sequences(lengths: list[int], beams: list[int]) -> list[Sequence]:
    params = [DecodeParams(max_length=9, beam_size=b, length_penalty=0.6, keep_attention=True) for b in beams]
    return [Sequence(p, n, tag=i) for i, (p, n) in enumerate(zip(params, lengths))]


def _decode(model: TinyModel, lengths: list[int], beams: list[int], split_after: int | None) -> dict:
    batch = DecodingBatch(model, "cpu")
    memory = model.encode(_memory(lengths))
    batch.add(memory, model.init_state(memory), _sequences(lengths, beams))
    results, batches, steps = {}, [batch], 0
    while any(b.live_sequences for b in batches):
        if steps == split_after:
            batches = [part for b in batches for part in b.split()]
        for b in batches:
            if b.live_sequences:
                results.update({seq.tag: r for seq, r in b.step().finished})
        steps += 1
    return results


@torch.no_grad()
def test_a_split_batch_decodes_exactly_as_the_shared_one():
    model = TinyModel()
    lengths, beams = [5, 3, 7, 4], [1, 3, 1, 2]  # greedy and beam sequences together
    shared = _decode(model, lengths, beams, split_after=None)
    split = _decode(model, lengths, beams, split_after=2)
    assert sorted(shared) == sorted(split) == [0, 1, 2, 3]
    for tag in shared:
        assert split[tag].tokens == shared[tag].tokens, tag
        assert split[tag].score == pytest.approx(shared[tag].score, abs=1e-5)
        torch.testing.assert_close(split[tag].attention, shared[tag].attention, atol=1e-5, rtol=1e-4)


class FailsOnRow(TinyModel):
    """Raises whenever its step batch holds a row whose memory starts with the marker."""

    MARKER = 99.0

    def step(self, prev, state, memory):
        if bool((memory.values[:, 0, 0] == self.MARKER).any()):
            raise RuntimeError("bad row")
        return super().step(prev, state, memory)


@torch.no_grad()
def test_length_buckets_drop_only_the_sequence_the_model_fails_on():
    model = FailsOnRow()
    lengths = [5, 6, 7]
    memory = _memory(lengths)
    expected = {}
    for i, n in enumerate(lengths):  # alone, without the bad row
        alone = DecodingBatch(model, "cpu")
        one = model.encode(Memory(memory.values[i : i + 1, :n], memory.mask[i : i + 1, :n]))
        alone.add(one, model.init_state(one), _sequences([n], [1]))
        while alone.live_sequences:
            for _, result in alone.step().finished:
                expected[i] = result
    poisoned = memory.values.clone()
    poisoned[1, 0, 0] = FailsOnRow.MARKER
    buckets = LengthBuckets(model, "cpu")
    encoded = model.encode(Memory(poisoned, memory.mask))
    buckets.add(encoded, model.init_state(encoded), _sequences(lengths, [1, 1, 1]))
    results, failed = {}, []
    while buckets.live_sequences:
        events = buckets.step()
        results.update({seq.tag: r for seq, r in events.finished})
        failed += [(seq.tag, str(error)) for seq, error in events.failed]
    assert failed == [(1, "bad row")]
    assert sorted(results) == [0, 2]
    for tag in (0, 2):
        assert results[tag].tokens == expected[tag].tokens and results[tag].score == pytest.approx(expected[tag].score, abs=1e-5)
    assert not buckets.batches or all(not b.live_sequences for b in buckets.batches.values())


@torch.no_grad()
def test_offline_decoding_raises_the_models_own_exception():
    model = FailsOnRow()
    memory = _memory([4])
    memory.values[0, 0, 0] = FailsOnRow.MARKER
    with pytest.raises(RuntimeError, match="^bad row$"):
        greedy_decode(model, model.encode(memory), 5)
