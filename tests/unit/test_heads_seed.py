"""Seeded sampling: a request's `seed` gives it its own random stream, so the same seed gives the
same output alone, beside other requests, joined mid-batch or in the engine; other seeds differ."""

from __future__ import annotations

import asyncio

import pytest
import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory
from mmserve.plugins.nn.decoding import DecodeParams, DecodingBatch, Sequence
from mmserve.plugins.nn.heads import BernoulliHead, CategoricalHead, GaussianHead, OutputHead, Sampling
from mmserve.plugins.speech.task import SpeechTask
from mmserve.server.engine import EngineConfig, TaskEngine
from mmserve.server.http.params import GenerationParams, to_decode_params
from mmserve.server.settings import Settings

VOCAB, EOS = 12, 1


class RandomWalkStub(EncoderDecoder):
    """Spread-out outputs that depend on the input id and the previous output, so sampled
    sequences differ per draw and an error in any row's stream shows up downstream."""

    def __init__(self, head: OutputHead, width: int):
        super().__init__()
        self.head, self.width = head, width
        self.table = torch.randn(8, 32, width, generator=torch.Generator().manual_seed(1))  # [inputs, prev, out]

    def collate(self, items):
        return torch.tensor(items, dtype=torch.float32)  # [B] input ids

    def encode(self, batch):
        return Memory(values=batch.view(-1, 1, 1), mask=torch.ones(batch.shape[0], 1, dtype=torch.bool))

    def init_state(self, memory):
        return {"t": torch.zeros(memory.batch_size, dtype=torch.long)}

    def step(self, prev, state, memory):
        ids = memory.values[:, 0, 0].long()
        key = prev if prev.dim() == 1 else (prev.float().sum(-1) * 7).long()
        logits = self.table[ids, key.abs() % 32]
        if isinstance(self.head, CategoricalHead):
            logits = logits.clone()
            logits[:, EOS] = -1e9  # rows run to max_length
        return logits, {"t": state["t"] + 1}, torch.ones(len(ids), 1)


def _model(kind: str) -> RandomWalkStub:
    if kind == "categorical":
        return RandomWalkStub(CategoricalHead(0, EOS), VOCAB)
    if kind == "bernoulli":
        return RandomWalkStub(BernoulliHead(6), 6)
    return RandomWalkStub(GaussianHead(3), 6)


def _decode(model: EncoderDecoder, groups: list[list[tuple[int, int | None]]], steps_between: int = 3) -> list[list]:
    """Decode (input id, seed) rows at temperature 1: each group joins the batch
    `steps_between` steps after the one before it; outputs in input order."""
    batch = DecodingBatch(model, "cpu")
    results: dict[int, list] = {}
    tag = 0
    for group in groups:
        memory = model.encode(model.collate([i for i, _ in group]))
        sequences = []
        for _, seed in group:
            sequences.append(Sequence(DecodeParams(max_length=10, temperature=1.0, seed=seed), 1, tag=tag))
            tag += 1
        batch.add(memory, model.init_state(memory), sequences)
        for _ in range(steps_between):
            for seq, result in batch.step().finished:
                results[seq.tag] = result.tokens
    while batch.live_sequences:
        for seq, result in batch.step().finished:
            results[seq.tag] = result.tokens
    return [results[i] for i in range(tag)]


@pytest.mark.parametrize("kind", ["categorical", "bernoulli", "gaussian"])
def test_same_seed_same_output_whatever_the_neighbours(kind):
    model = _model(kind)
    torch.manual_seed(123)
    (alone,) = _decode(model, [[(3, 42)]])
    torch.manual_seed(7)  # the unseeded neighbours draw from a different global stream
    crowded = _decode(model, [[(5, None), (3, 42), (3, None)], [(3, 42), (2, 9)]])
    assert crowded[1] == alone  # first batch, among unseeded rows
    assert crowded[3] == alone  # joined a running batch three steps later
    assert crowded[4] != alone  # another input with another seed


@pytest.mark.parametrize("kind", ["categorical", "bernoulli", "gaussian"])
def test_different_seeds_differ_and_unseeded_rows_still_sample(kind):
    model = _model(kind)
    outputs = _decode(model, [[(3, seed) for seed in range(4)] + [(3, None), (3, None)]])
    assert len({repr(o) for o in outputs[:4]}) == 4
    assert outputs[4] != outputs[5]  # the shared batched draw is still random


def test_sampling_keeps_each_rows_generator_through_select_and_concat():
    a = Sampling.build([1.0, 1.0], [0, 0], [1.0, 1.0], "cpu", seeds=[None, 5])
    b = Sampling.build([1.0], [0], [1.0], "cpu")  # no seeded row: no generators at all
    assert b.generators == ()
    joined = Sampling.concat([b, a])
    assert joined.generators[0] is None and joined.generators[1] is None
    assert joined.generators[2] is a.generators[1]
    picked = joined.select(torch.tensor([2]))
    assert picked.generators == (a.generators[1],)


def test_seeded_requests_in_the_engine_match_across_batches():
    model = _model("categorical")
    engine = TaskEngine("walk", model, EngineConfig(max_batch_size=4, max_wait_ms=1)).start()

    def params(seed):
        return DecodeParams(max_length=10, temperature=1.0, seed=seed)

    async def main():
        first = await asyncio.gather(engine.generate(3, params(42)), engine.generate(4, params(None)))
        second = await asyncio.gather(*(engine.generate(i, params(s)) for i, s in [(1, None), (2, 8), (3, 42), (3, 43)]))
        return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        engine.stop()
    assert first[0].tokens == second[2].tokens
    assert first[0].score == pytest.approx(second[2].score, abs=1e-5)
    assert second[3].tokens != second[2].tokens


def test_seed_is_a_generic_request_parameter():
    settings = Settings()
    params = GenerationParams.model_validate({"temperature": 1.0, "seed": 42})
    assert to_decode_params(params, SpeechTask(), settings).seed == 42
    assert to_decode_params(GenerationParams(), SpeechTask(), settings).seed is None
    with pytest.raises(ValueError):
        GenerationParams.model_validate({"seed": -1})
