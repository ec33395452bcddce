"""The model contract every task model implements: encode, init_state, step.

Decoder state is a dict of batch-first tensors, and memory is a batch-first dataclass, so the
engine can gather, scatter and concatenate rows of any task's state without knowing its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass
class Memory:
    """Encoder output for B sequences.

    values: [B, N, D] encoder features; mask: [B, N] True where a position is real;
    keys: [B, N, A] attention keys precomputed once per input (None if the attention needs none).
    """

    values: torch.Tensor
    mask: torch.Tensor
    keys: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    def select(self, index: torch.Tensor) -> Memory:
        """Rows `index` of every field (index is a 1-D LongTensor)."""
        return Memory(**{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    @staticmethod
    def concat(memories: list[Memory]) -> Memory:
        """Stack memories of different lengths N into one batch, padding and masking the tail."""
        assert memories, "concat needs at least one memory"
        longest = max(m.values.shape[1] for m in memories)
        out: dict[str, Any] = {}
        for f in fields(Memory):
            parts = [getattr(m, f.name) for m in memories]
            if parts[0] is None:
                assert all(p is None for p in parts), f"memory field {f.name} is set on some rows only"
                out[f.name] = None
                continue
            out[f.name] = torch.cat([_pad_positions(p, longest) for p in parts], dim=0)
        return Memory(**out)


def _take(tensor: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor.index_select(0, index)


def _pad_positions(tensor: torch.Tensor, length: int) -> torch.Tensor:
    # Positions are dim 1 for values [B,N,D], mask [B,N] and keys [B,N,A]; padding the mask
    # with zeros (False) is what keeps attention off the padded tail.
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad_shape = (tensor.shape[0], missing, *tensor.shape[2:])
    return torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=1)


def select_state(state: State, index: torch.Tensor) -> State:
    """Rows `index` of every tensor of a decoder state."""
    return {name: t.index_select(0, index) for name, t in state.items()}


def concat_states(states: list[State]) -> State:
    """Concatenate the rows of several decoder states with the same keys."""
    assert states, "concat_states needs at least one state"
    keys = states[0].keys()
    assert all(s.keys() == keys for s in states), "decoder states with different keys cannot be joined"
    return {k: torch.cat([s[k] for s in states], dim=0) for k in keys}


class EncoderDecoder(nn.Module):
    """Base class of every task model: an encoder plus an attention RNN decoder.

    Subclasses set `bos_id`, `eos_id` (categorical heads) and implement the methods below.
    `prev` is a LongTensor [B] of token ids for categorical heads, or a float [B, V] multi-hot
    frame for Bernoulli heads.
    """

    bos_id: int = 1
    eos_id: int = 2
    output_kind: str = "categorical"

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Batch preprocessed inputs for `encode`; same-shaped inputs are stacked by default."""
        return torch.stack(items, dim=0)

    def encode(self, batch: torch.Tensor) -> Memory:  # pragma: no cover - abstract
        raise NotImplementedError

    def init_state(self, memory: Memory) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(
        self, prev: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:  # pragma: no cover - abstract
        """One decoding step: logits [B, V], the new state, attention weights [B, N]."""
        raise NotImplementedError
