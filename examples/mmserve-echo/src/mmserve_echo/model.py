"""A hard-wired attention pointer: step t attends to input position t and emits its character
upper-cased, then <eos>. No weights, so outputs are exact and lengths follow the input."""

from __future__ import annotations

import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.heads import CategoricalHead

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
VOCAB = OFFSET + 256  # token = byte + OFFSET


def _upper_table() -> torch.Tensor:
    table = torch.arange(VOCAB)
    for byte in range(ord("a"), ord("z") + 1):
        table[OFFSET + byte] = OFFSET + byte - 32
    return table


class EchoModel(EncoderDecoder):
    bos_id, eos_id = BOS, EOS

    def __init__(self) -> None:
        super().__init__()
        self.head = CategoricalHead(BOS, EOS)
        self.register_buffer("upper", _upper_table(), persistent=False)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        longest = max(len(x) for x in items)
        batch = torch.full((len(items), longest), PAD, dtype=torch.long)
        for i, x in enumerate(items):
            batch[i, : len(x)] = x
        return batch

    def encode(self, batch: torch.Tensor) -> Memory:
        values = torch.nn.functional.one_hot(batch, VOCAB).float()  # [B, N, V]
        return Memory(values=values, mask=batch != PAD)

    def init_state(self, memory: Memory) -> State:
        return {"position": torch.zeros(memory.batch_size, dtype=torch.long, device=memory.values.device)}

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        position = state["position"]  # [B]
        batch, positions = memory.mask.shape
        lengths = memory.mask.sum(dim=1)  # [B]
        inside = position < lengths
        at = position.clamp(max=positions - 1)
        weights = torch.nn.functional.one_hot(at, positions).float() * inside.unsqueeze(1)  # [B, N]
        # Past the end, attend uniformly over the input (weights must still sum to one).
        uniform = memory.mask.float() / lengths.clamp_min(1).unsqueeze(1)
        weights = torch.where(inside.unsqueeze(1), weights, uniform)
        read = torch.bmm(weights.unsqueeze(1), memory.values).squeeze(1).argmax(dim=1)  # [B]
        token = torch.where(inside, self.upper[read], torch.full_like(read, EOS))
        logits = torch.nn.functional.one_hot(token, VOCAB).float() * 20.0
        return logits, {"position": position + 1}, weights
