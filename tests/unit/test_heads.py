"""Output heads: their choice rules, exact log-probabilities, and decoding through the engine."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory
from mmserve.plugins.nn.heads import BernoulliHead, GaussianHead, Sampling, head_from_config
from mmserve.plugins.nn.search import greedy_decode, sample_decode
from mmserve.server.engine import DecodeParams, EngineConfig, TaskEngine, UnsupportedDecoding


class PianoRollStub(EncoderDecoder):
    """Frame t switches on unit (t + offset) % 8; after `length` frames it switches on the end
    unit 8. The offset and length come from the input, so every row's true output is known."""

    def __init__(self) -> None:
        super().__init__()
        self.head = BernoulliHead(units=9, end_unit=8)

    def collate(self, items):
        return torch.tensor(items, dtype=torch.float32)  # [B, 2]: offset, length

    def encode(self, batch):
        return Memory(values=batch.unsqueeze(1), mask=torch.ones(batch.shape[0], 1, dtype=torch.bool))

    def init_state(self, memory):
        return {"t": torch.zeros(memory.batch_size, dtype=torch.long)}

    def step(self, prev, state, memory):
        offset, length = memory.values[:, 0, 0].long(), memory.values[:, 0, 1].long()
        t = state["t"]
        unit = torch.where(t < length, (t + offset) % 8, torch.full_like(t, 8))
        logits = torch.full((len(t), 9), -30.0)
        logits[torch.arange(len(t)), unit] = 30.0
        return logits, {"t": t + 1}, torch.ones(len(t), 1)


def test_bernoulli_model_decodes_in_the_engine_with_requests_of_different_lengths():
    engine = TaskEngine("roll", PianoRollStub(), EngineConfig(max_batch_size=4, max_wait_ms=1)).start()
    inputs = [(0, 3), (5, 1), (2, 6), (7, 0)]

    async def main():
        return await asyncio.gather(*(engine.generate(x, DecodeParams(max_length=20)) for x in inputs))

    try:
        results = asyncio.run(main())
    finally:
        engine.stop()
    for (offset, length), result in zip(inputs, results):
        assert result.tokens == [[(t + offset) % 8] for t in range(length)], (offset, length)
        assert result.finished
        assert result.score == pytest.approx(0.0, abs=1e-6)  # every unit was certain


def test_beam_search_is_refused_for_a_bernoulli_head():
    engine = TaskEngine("roll", PianoRollStub(), EngineConfig())
    with pytest.raises(UnsupportedDecoding, match="beam search"):
        engine.check(DecodeParams(beam_size=3))


def test_bernoulli_log_prob_is_the_exact_frame_probability():
    head = BernoulliHead(units=3)
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    frame = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)[0]
    expected = math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2])
    assert head.log_prob(logits, frame).item() == pytest.approx(expected, abs=1e-5)
    chosen, _ = head.choose(logits, Sampling.greedy(1, "cpu"))
    assert chosen.tolist() == [[0.0, 1.0, 0.0]]  # p > 0.5 only; sigmoid(0) = 0.5 stays off


def test_bernoulli_sampling_follows_the_probabilities():
    head = BernoulliHead(units=1)
    logits = torch.full((4000, 1), math.log(0.3 / 0.7))
    sampling = Sampling.build([1.0] * 4000, [0] * 4000, [1.0] * 4000, "cpu")
    frames, _ = head.choose(logits, sampling, torch.Generator().manual_seed(0))
    assert 0.27 < frames.mean().item() < 0.33


def test_gaussian_head_mean_at_temperature_zero_and_exact_log_density():
    head = GaussianHead(dim=2)
    output = torch.tensor([[1.0, -2.0, math.log(4.0), 0.0]])  # mean (1, -2), variance (4, 1)
    value, log_prob = head.choose(output, Sampling.greedy(1, "cpu"))
    assert value.tolist() == [[1.0, -2.0]]
    normal = torch.distributions.Normal(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 1.0]))
    assert log_prob.item() == pytest.approx(normal.log_prob(torch.tensor([1.0, -2.0])).sum().item(), abs=1e-5)
    target = torch.tensor([[0.5, 0.0]])
    assert head.log_prob(output, target).item() == pytest.approx(normal.log_prob(target[0]).sum().item(), abs=1e-5)


def test_gaussian_sampling_spread_scales_with_temperature():
    head = GaussianHead(dim=1)
    output = torch.tensor([[3.0, 0.0]]).repeat(4000, 1)  # mean 3, std 1
    generator = torch.Generator().manual_seed(0)
    values, _ = head.choose(output, Sampling.build([2.0] * 4000, [0] * 4000, [1.0] * 4000, "cpu"), generator)
    assert values.mean().item() == pytest.approx(3.0, abs=0.15)
    assert values.std().item() == pytest.approx(2.0, abs=0.15)


def test_heads_round_trip_through_their_config():
    for head in (BernoulliHead(88, end_unit=87), GaussianHead(3)):
        assert head_from_config(head.config()).config() == head.config()


def test_offline_search_and_the_engine_agree_for_a_bernoulli_head():
    model = PianoRollStub()
    memory = model.encode(model.collate([(1, 4), (3, 2)]))
    greedy = greedy_decode(model, memory, max_length=10)
    sampled = sample_decode(model, memory, max_length=10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert [r.tokens for r in greedy] == [[[1], [2], [3], [4]], [[3], [4]]]
    assert [r.tokens for r in sampled] == [r.tokens for r in greedy]  # certain units sample the same
