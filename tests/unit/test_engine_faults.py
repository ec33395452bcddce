"""A model that raises on one input fails only that request, even when it shares a batch:
in the encoder, or in a decode step that many requests share."""

from __future__ import annotations

import asyncio

import pytest
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


class PoisonedStepEcho(EchoModel):
    """Echo whose decode step raises whenever a row of its batch reads a '!'."""

    def __init__(self) -> None:
        super().__init__()
        self.step_batch_sizes: list[int] = []

    def step(self, prev, state, memory):
        self.step_batch_sizes.append(int(prev.shape[0]))
        at = state["position"].clamp(max=memory.values.shape[1] - 1)
        reading = memory.values.argmax(-1).gather(1, at.unsqueeze(1)).squeeze(1)  # [B]
        if bool(((reading == POISON) & (state["position"] < memory.mask.sum(1))).any()):
            raise ValueError("cannot decode '!'")
        return super().step(prev, state, memory)


def _ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.long) + OFFSET


def _run_batch(model: EchoModel, texts: list[str], params: DecodeParams | None = None) -> list:
    # A long max_wait_ms with max_batch_size = len(texts): all of them form one encoder batch.
    config = EngineConfig(max_batch_size=len(texts), max_wait_ms=2000, max_active=16, max_queue=16)
    engine = TaskEngine("echo", model, config, ServerMetrics()).start()
    try:
        async def main():
            calls = (engine.generate(_ids(t), params or DecodeParams(max_length=16)) for t in texts)
            return await asyncio.gather(*calls, return_exceptions=True)

        return asyncio.run(main())
    finally:
        engine.stop()


def _only_the_poisoned_one_failed(texts: list[str], results: list, message: str) -> None:
    for text, result in zip(texts, results):
        if "!" in text:
            assert isinstance(result, ModelFailed) and message in str(result) and result.status_code == 500
        else:
            assert not isinstance(result, BaseException), f"{text!r} failed with {result!r}"
            assert bytes(t - OFFSET for t in result.tokens).decode() == text.upper()


def test_a_model_raising_on_one_input_fails_only_that_request():
    model = PoisonedEcho()
    texts = ["one", "tw!o", "three", "four", "five"]
    results = _run_batch(model, texts)
    assert model.batch_sizes[0] == len(texts), f"the inputs did not share a batch: {model.batch_sizes}"
    _only_the_poisoned_one_failed(texts, results, "cannot read '!'")


def test_an_input_error_raised_by_the_model_keeps_its_4xx():
    results = _run_batch(PoisonedEcho(InputError), ["ok", "b!d"])
    assert isinstance(results[1], InputError) and results[1].status_code == 400
    assert bytes(t - OFFSET for t in results[0].tokens).decode() == "OK"


@pytest.mark.parametrize("beam", [1, 2])
def test_a_model_failing_in_a_shared_decode_step_fails_only_that_request(beam):
    model = PoisonedStepEcho()
    texts = ["one", "tw!o", "six", "four", "ten"]  # one length bucket: one step batch
    results = _run_batch(model, texts, DecodeParams(max_length=16, beam_size=beam))
    assert model.step_batch_sizes[0] == len(texts) * beam, f"the inputs did not share a step: {model.step_batch_sizes}"
    _only_the_poisoned_one_failed(texts, results, "cannot decode '!'")
    # after the failure the others went on alone, one sequence per step batch
    assert max(model.step_batch_sizes[-3:]) <= beam
