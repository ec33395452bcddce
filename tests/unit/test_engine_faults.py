"""A model that raises on one input fails only that request, even when it shares a batch."""

from __future__ import annotations

import asyncio

import torch
from mmserve_echo.model import OFFSET, EchoModel

from mmserve.plugins.errors import InputError
from mmserve.server.engine import DecodeParams, EngineConfig, ModelFailed, TaskEngine
from mmserve.server.metrics import ServerMetrics

POISON = ord("!") + OFFSET


class PoisonedEcho(EchoModel):
    """Echo whose encoder raises whenever its batch holds an input with a '!' in it."""

    def __init__(self, error: type[Exception] = ValueError):
        super().__init__()
        self.error = error
        self.batch_sizes: list[int] = []

    def encode(self, batch: torch.Tensor):
        self.batch_sizes.append(batch.shape[0])
        if (batch == POISON).any():
            raise self.error("cannot read '!'")
        return super().encode(batch)


def _ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.long) + OFFSET


def _run_batch(model: PoisonedEcho, texts: list[str]) -> list:
    # A long max_wait_ms with max_batch_size = len(texts): all of them form one encoder batch.
    config = EngineConfig(max_batch_size=len(texts), max_wait_ms=2000, max_active=16, max_queue=16)
    engine = TaskEngine("echo", model, config, ServerMetrics()).start()
    try:
        async def main():
            calls = (engine.generate(_ids(t), DecodeParams(max_length=16)) for t in texts)
            return await asyncio.gather(*calls, return_exceptions=True)

        return asyncio.run(main())
    finally:
        engine.stop()


def test_a_model_raising_on_one_input_fails_only_that_request():
    model = PoisonedEcho()
    texts = ["one", "tw!o", "three", "four", "five"]
    results = _run_batch(model, texts)
    assert model.batch_sizes[0] == len(texts), f"the inputs did not share a batch: {model.batch_sizes}"
    failed = results[1]
    assert isinstance(failed, ModelFailed) and "cannot read '!'" in str(failed) and failed.status_code == 500
    for text, result in zip(texts, results):
        if text != "tw!o":
            assert not isinstance(result, BaseException), f"{text!r} failed with {result!r}"
            assert bytes(t - OFFSET for t in result.tokens).decode() == text.upper()


def test_an_input_error_raised_by_the_model_keeps_its_4xx():
    results = _run_batch(PoisonedEcho(InputError), ["ok", "b!d"])
    assert isinstance(results[1], InputError) and results[1].status_code == 400
    assert bytes(t - OFFSET for t in results[0].tokens).decode() == "OK"
