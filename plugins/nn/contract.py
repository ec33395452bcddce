"""The model contract every task model implements: encode, init_state, step.

Decoder state is a dict of batch-first tensors, and memory is a batch-first dataclass, so the
engine can gather, scatter and concatenate rows of any task's state without knowing its shape.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from mmserve.plugins.nn.heads import OutputHead

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
        return replace(self, **{f.name: _take(getattr(self, f.name), index) for f in fields(self)})  # a subclass stays one

    def trim(self) -> Memory:
        """Drop trailing positions no row uses: after the longest input leaves a batch, the
        others stop paying for its padding. Other fields (a subclass's) are kept as they are."""
        used = self.mask.any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        if length >= self.mask.shape[1]:
            return self
        keys = None if self.keys is None else self.keys[:, :length]
        return replace(self, values=self.values[:, :length], mask=self.mask[:, :length], keys=keys)

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
    """Concatenate the rows of several decoder states with the same keys.

    A state tensor whose dim 1 differs between the parts is per memory position (e.g. the
    previous attention weights [B, N] of location-aware attention): it is zero-padded to the
    longest, exactly as `Memory.concat` pads the memory it belongs to."""
    assert states, "concat_states needs at least one state"
    keys = states[0].keys()
    assert all(s.keys() == keys for s in states), "decoder states with different keys cannot be joined"
    out: State = {}
    for k in keys:
        parts = [s[k] for s in states]
        if len({tuple(p.shape[1:]) for p in parts}) > 1:
            assert all(p.dim() >= 2 and p.shape[2:] == parts[0].shape[2:] for p in parts), (
                f"state {k!r} parts differ beyond dim 1: {[tuple(p.shape) for p in parts]}"
            )
            longest = max(p.shape[1] for p in parts)
            parts = [_pad_positions(p, longest) for p in parts]
        out[k] = torch.cat(parts, dim=0)
    return out


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a collated batch to `device`: a tensor, or any nesting of tuples, lists, dicts and
    dataclasses holding tensors (other values are left as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(batch, **{f.name: to_device(getattr(batch, f.name), device) for f in fields(batch)})
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


class EncoderDecoder(nn.Module, metaclass=ABCMeta):
    """Base class of every task model: an encoder plus an attention RNN decoder.

    A subclass sets `self.head` (an `OutputHead`, see heads.py) in `__init__` and implements
    `encode`, `init_state` and `step`. What `prev` and a step's output are belongs to the head:
    token ids and logits for a categorical head, multi-hot frames and per-unit logits for a
    Bernoulli head, real vectors and mean / log-variance for a Gaussian head.
    """

    head: OutputHead

    def collate(self, items: list[Any]) -> Any:
        """Batch preprocessed inputs for `encode`. Any nesting of tensors may be returned
        (padded values plus lengths, say); the engine moves it to the device as a whole.
        Same-shaped tensors are stacked by default."""
        return torch.stack(items, dim=0)

    @abstractmethod
    def encode(self, batch: Any) -> Memory:
        """The collated batch -> Memory(values [B, N, D], mask [B, N] from the real lengths)."""

    @abstractmethod
    def init_state(self, memory: Memory) -> State:
        """The decoder state for B sequences: a dict of batch-first tensors."""

    @abstractmethod
    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One decoding step: the head's output [B, ...], the new state, attention weights [B, N]."""
