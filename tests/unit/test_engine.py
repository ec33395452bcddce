"""The per-task engine: batching, iteration-level joins, cancellation, overload, failures."""

from __future__ import annotations

import asyncio

import pytest
import torch
from mmserve_echo.model import OFFSET, EchoModel

from mmserve.plugins.nn.search import greedy_decode
from mmserve.server.engine import DecodeParams, EngineConfig, EngineOverloaded, TaskEngine
from mmserve.server.metrics import ServerMetrics


def _encode_text(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.long) + OFFSET


def _text(tokens: list[int]) -> str:
    return bytes(t - OFFSET for t in tokens).decode()


@pytest.fixture
def engine():
    engine = TaskEngine("echo", EchoModel(), EngineConfig(max_batch_size=4, max_wait_ms=2, max_active=8, max_queue=50), ServerMetrics()).start()
    yield engine
    engine.stop()


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_of_mixed_lengths_are_all_correct(engine):
    texts = [("abc" * (i % 7 + 1))[: i % 11 + 1] for i in range(40)]

    async def main():
        return await asyncio.gather(*(engine.generate(_encode_text(t), DecodeParams(max_length=64)) for t in texts))

    results = _run(main())
    assert [_text(r.tokens) for r in results] == [t.upper() for t in texts]
    assert all(r.finished for r in results)


def test_engine_output_equals_decoding_alone(engine):
    """Greedy under continuous batching equals greedy_decode of the same input alone."""
    model = EchoModel()
    texts = ["hello", "a", "continuous batching", "rnn"]

    async def staggered(i: int, text: str):
        await asyncio.sleep(0.003 * i)  # arrive while others are mid-sequence
        return await engine.generate(_encode_text(text), DecodeParams(max_length=32, keep_attention=True))

    async def main():
        return await asyncio.gather(*(staggered(i, t) for i, t in enumerate(texts)))

    for text, result in zip(texts, _run(main())):
        alone = greedy_decode(model, model.encode(model.collate([_encode_text(text)])), max_length=32)[0]
        assert result.tokens == alone.tokens
        assert result.score == pytest.approx(alone.score, abs=1e-5)
        torch.testing.assert_close(result.attention, alone.attention)


def test_max_length_cuts_and_reports_unfinished(engine):
    result = _run(engine.generate(_encode_text("abcdef"), DecodeParams(max_length=3)))
    assert _text(result.tokens) == "ABC" and not result.finished


def test_beam_requests_share_the_engine(engine):
    async def main():
        return await asyncio.gather(
            engine.generate(_encode_text("beam"), DecodeParams(max_length=16, beam_size=3)),
            engine.generate(_encode_text("greedy"), DecodeParams(max_length=16)),
        )

    beam, greedy = _run(main())
    assert _text(beam.tokens) == "BEAM" and _text(greedy.tokens) == "GREEDY"


def test_cancelled_request_frees_its_slot():
    engine = TaskEngine("echo", EchoModel(), EngineConfig(max_batch_size=1, max_wait_ms=0, max_active=1, max_queue=10)).start()
    try:
        async def main():
            long = asyncio.ensure_future(engine.generate(_encode_text("x" * 4000), DecodeParams(max_length=4000)))
            await asyncio.sleep(0.05)
            assert engine.active_sequences == 1
            long.cancel()
            # With the only slot held by the cancelled sequence this would wait ~4000 steps.
            short = await asyncio.wait_for(engine.generate(_encode_text("ok"), DecodeParams(max_length=8)), timeout=5)
            return short

        assert _text(_run(main()).tokens) == "OK"
    finally:
        engine.stop()


def test_full_queue_is_rejected_with_overload():
    engine = TaskEngine("echo", EchoModel(), EngineConfig(max_batch_size=1, max_wait_ms=0, max_active=1, max_queue=2))
    # Not started: nothing drains the queue.

    async def main():
        engine.submit(_encode_text("a"), DecodeParams())
        engine.submit(_encode_text("b"), DecodeParams())
        with pytest.raises(EngineOverloaded, match="overloaded"):
            engine.submit(_encode_text("c"), DecodeParams())

    _run(main())


class ExplodingModel(EchoModel):
    def step(self, prev, state, memory):
        raise ValueError("boom")


def test_model_errors_reach_every_waiting_caller():
    engine = TaskEngine("echo", ExplodingModel(), EngineConfig(max_batch_size=8, max_wait_ms=20)).start()
    try:
        async def main():
            return await asyncio.gather(
                *(engine.generate(_encode_text(t), DecodeParams()) for t in ["a", "bb", "ccc"]), return_exceptions=True
            )

        errors = _run(main())
        assert all(isinstance(e, RuntimeError) and "boom" in str(e) for e in errors)
    finally:
        engine.stop()


def test_encoder_batches_form_under_load():
    metrics = ServerMetrics()
    engine = TaskEngine("echo", EchoModel(), EngineConfig(max_batch_size=16, max_wait_ms=50), metrics).start()
    try:
        async def main():
            return await asyncio.gather(*(engine.generate(_encode_text("batch"), DecodeParams()) for _ in range(16)))

        _run(main())
        count = metrics.registry.get_sample_value("mmserve_encode_batch_size_count", {"task": "echo"})
        assert count is not None and count < 16, "16 simultaneous requests should share encoder batches"
    finally:
        engine.stop()


def test_two_hundred_concurrent_requests_are_all_answered():
    engine = TaskEngine("echo", EchoModel(), EngineConfig(max_batch_size=32, max_wait_ms=2, max_active=64, max_queue=400)).start()
    try:
        async def main():
            return await asyncio.gather(*(engine.generate(_encode_text(f"r{i}"), DecodeParams()) for i in range(200)))

        results = _run(main())
        assert [_text(r.tokens) for r in results] == [f"R{i}" for i in range(200)]
    finally:
        engine.stop()
