"""Offline decoding of whole batches: greedy, sampling and beam search.

Each strategy runs the same `DecodingBatch` the serving engine steps, to the end, so a
sequence decodes the same way alone, in a batch, or in the server among other requests.
"""

from __future__ import annotations

import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory
from mmserve.plugins.nn.decoding import (
    DecodeParams,
    DecodeResult,
    DecodingBatch,
    ModelStepError,
    Sequence,
    length_penalty,
)
from mmserve.plugins.nn.heads import choose_next_tokens

__all__ = [
    "DecodeParams",
    "DecodeResult",
    "beam_search",
    "choose_next_tokens",
    "decode",
    "greedy_decode",
    "length_penalty",
    "sample_decode",
]


@torch.no_grad()
def decode(
    model: EncoderDecoder, memory: Memory, params: DecodeParams, generator: torch.Generator | None = None
) -> list[DecodeResult]:
    """Decode every row of `memory` with `params` (any strategy the model's head supports)."""
    batch = DecodingBatch(model, memory.values.device)
    lengths = memory.mask.sum(dim=1).tolist()
    sequences = [Sequence(params, int(n), tag=i) for i, n in enumerate(lengths)]
    batch.add(memory, model.init_state(memory), sequences)
    results: dict[int, DecodeResult] = {}
    while batch.live_sequences:
        try:
            finished = batch.step(generator).finished
        except ModelStepError as error:  # offline: the model's own exception, as it raised it
            raise error.cause from None
        for seq, result in finished:
            results[seq.tag] = result
    return [results[i] for i in range(len(sequences))]


def greedy_decode(model: EncoderDecoder, memory: Memory, max_length: int, keep_attention: bool = True) -> list[DecodeResult]:
    """Greedy decoding of every row of `memory`."""
    return decode(model, memory, DecodeParams(max_length=max_length, keep_attention=keep_attention))


def sample_decode(
    model: EncoderDecoder,
    memory: Memory,
    max_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    keep_attention: bool = True,
) -> list[DecodeResult]:
    """Temperature / top-k / top-p sampling of every row of `memory`."""
    params = DecodeParams(max_length, 1, temperature, top_k, top_p, keep_attention=keep_attention)
    return decode(model, memory, params, generator)


def beam_search(
    model: EncoderDecoder,
    memory: Memory,
    beam_size: int,
    max_length: int,
    alpha: float = 0.0,
    keep_attention: bool = True,
) -> list[DecodeResult]:
    """Beam search with GNMT length penalty `alpha`, batched over the rows of `memory`.

    A hypothesis ends when it emits <eos>; an input is done once it holds `beam_size` ended
    hypotheses. With beam_size 1 this is exactly greedy decoding.
    """
    assert beam_size >= 1, f"beam_size must be >= 1, got {beam_size}"
    params = DecodeParams(max_length, beam_size, length_penalty=alpha, keep_attention=keep_attention)
    return decode(model, memory, params)
