"""The per-task engine: batching, iteration-level joins, cancellation, overload, failures."""

from __future__ import annotations

import asyncio
import threading

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


async def _until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never came true"
        await asyncio.sleep(0.001)


def _completion_order(**futures: asyncio.Future) -> list[str]:
    """Names of `futures` in the order they complete (filled in as they do)."""
    order: list[str] = []
    for name, future in futures.items():
        future.add_done_callback(lambda _, name=name: order.append(name))
    return order


class GatedEcho(EchoModel):
    """EchoModel whose steps run only when the test lets them: behaviour by construction,
    not by timing luck. `allow(n)` lets n more steps run; `wait_for_steps(n)` blocks until
    n steps have run; `rows` records the batch size of every step."""

    def __init__(self) -> None:
        super().__init__()
        self._cv = threading.Condition()
        self._permits = 0
        self.steps = 0
        self.rows: list[int] = []
        self.widths: list[int] = []  # memory positions of every step

    def allow(self, steps: int = 1_000_000) -> None:
        with self._cv:
            self._permits += steps
            self._cv.notify_all()

    def wait_for_steps(self, steps: int, timeout: float = 30.0) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: self.steps >= steps, timeout), f"only {self.steps} of {steps} steps ran"

    def step(self, prev, state, memory):
        with self._cv:
            assert self._cv.wait_for(lambda: self._permits > 0, 30.0), "test never allowed this step"
            self._permits -= 1
        out = super().step(prev, state, memory)
        with self._cv:
            self.steps += 1
            self.rows.append(memory.batch_size)
            self.widths.append(memory.mask.shape[1])
            self._cv.notify_all()
        return out


def test_request_joins_a_running_batch_mid_sequence():
    model = GatedEcho()
    config = EngineConfig(max_batch_size=4, max_wait_ms=0, max_active=8, length_buckets=False)
    engine = TaskEngine("echo", model, config).start()
    try:
        async def main():
            first = asyncio.ensure_future(engine.generate(_encode_text("abcdefghij"), DecodeParams(max_length=64)))
            model.allow(3)
            await asyncio.to_thread(model.wait_for_steps, 3)
            second = asyncio.ensure_future(engine.generate(_encode_text("xy"), DecodeParams(max_length=64)))
            await _until(lambda: engine.encoded_requests == 2)  # encoded: joins at the next step
            order = _completion_order(first=first, second=second)
            model.allow()
            results = await first, await second
            # Results reach the event loop in step order, so this is the order they finished in.
            assert order == ["second", "first"], "the short request that joined later must finish first"
            return results

        first, second = _run(main())
        assert (_text(first.tokens), _text(second.tokens)) == ("ABCDEFGHIJ", "XY")
        assert model.rows[:3] == [1, 1, 1] and 2 in model.rows[3:], f"step batch sizes {model.rows}"
    finally:
        model.allow()
        engine.stop()


def test_greedy_request_is_not_stalled_by_a_long_beam_request():
    model = GatedEcho()
    config = EngineConfig(max_batch_size=4, max_wait_ms=0, max_active=8, length_buckets=False)
    engine = TaskEngine("echo", model, config).start()
    try:
        async def main():
            beam = asyncio.ensure_future(
                engine.generate(_encode_text("b" * 300), DecodeParams(max_length=400, beam_size=3))
            )
            model.allow(2)
            await asyncio.to_thread(model.wait_for_steps, 2)
            greedy = asyncio.ensure_future(engine.generate(_encode_text("go"), DecodeParams(max_length=8)))
            await _until(lambda: engine.encoded_requests == 2)
            order = _completion_order(beam=beam, greedy=greedy)
            model.allow()
            results = await beam, await greedy
            assert order == ["greedy", "beam"], "a greedy request waited for a whole beam search"
            return results

        beam, greedy = _run(main())
        assert _text(beam.tokens) == "B" * 300 and _text(greedy.tokens) == "GO"
        assert 3 + 1 in model.rows, f"the greedy row never shared a step with the 3 beam rows: {model.rows[:8]}"
    finally:
        model.allow()
        engine.stop()


def test_short_inputs_decode_apart_from_a_long_one():
    """Length buckets: rows with short memories never pay attention over a long one's padding."""
    model = GatedEcho()
    engine = TaskEngine("echo", model, EngineConfig(max_batch_size=8, max_wait_ms=10_000, max_active=8))
    texts = ["l" * 200, "a" * 5, "b" * 6, "c" * 7]

    async def main():
        futures = [asyncio.ensure_future(engine.generate(_encode_text(t), DecodeParams(max_length=300))) for t in texts]
        await asyncio.sleep(0)
        engine.start()
        model.allow()
        return await asyncio.gather(*futures)

    try:
        results = _run(main())
    finally:
        model.allow()
        engine.stop()
    assert [_text(r.tokens) for r in results] == [t.upper() for t in texts]
    steps = list(zip(model.rows, model.widths))
    assert (3, 7) in steps, f"the short inputs did not decode together: {steps[:6]}"
    assert all(width <= 8 or rows == 1 for rows, width in steps), f"a short row paid for the long memory: {steps[:6]}"


def test_cancelled_request_frees_its_slot():
    model = GatedEcho()
    engine = TaskEngine("echo", model, EngineConfig(max_batch_size=1, max_wait_ms=0, max_active=1, max_queue=10)).start()
    try:
        async def main():
            long = asyncio.ensure_future(engine.generate(_encode_text("x" * 4000), DecodeParams(max_length=4000)))
            model.allow(1)
            await asyncio.to_thread(model.wait_for_steps, 1)
            long.cancel()
            short = asyncio.ensure_future(engine.generate(_encode_text("ok"), DecodeParams(max_length=8)))
            model.allow(20)  # far fewer than the 3999 steps the cancelled sequence still needed
            return await asyncio.wait_for(short, timeout=30)

        assert _text(_run(main()).tokens) == "OK"
    finally:
        model.allow()
        engine.stop()


def test_a_long_input_does_not_pad_a_batch_of_short_ones():
    """Cost-based batching: inputs cost their length; a batch closes before it would exceed
    max_batch_cost, so the long input is encoded alone and the short ones together."""
    metrics = ServerMetrics()
    model = GatedEcho()
    config = EngineConfig(max_batch_size=16, max_batch_cost=40, max_wait_ms=10_000, max_active=32)
    engine = TaskEngine("echo", model, config, metrics, input_cost=len)
    encoded: list[list[int]] = []
    original = model.collate
    model.collate = lambda items: (encoded.append([len(x) for x in items]), original(items))[1]

    async def main():
        texts = ["a" * 5] * 6 + ["l" * 200] + ["b" * 5] * 2
        futures = [asyncio.ensure_future(engine.generate(_encode_text(t), DecodeParams(max_length=300))) for t in texts]
        await asyncio.sleep(0)
        engine.start()
        model.allow()
        return await asyncio.gather(*futures)

    try:
        results = _run(main())
    finally:
        model.allow()
        engine.stop()
    assert [len(r.tokens) for r in results] == [5] * 6 + [200] + [5] * 2
    assert [5, 5, 5, 5, 5, 5] in encoded and [200] in encoded, f"encoder batches by input length: {encoded}"
    assert not any(200 in batch and 5 in batch for batch in encoded), f"a long input padded short ones: {encoded}"


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
