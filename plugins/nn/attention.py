"""Additive (Bahdanau), location-aware (Chorowski) and multiplicative (Luong dot / general) attention.

All take a query [B, Q], memory values [B, N, D] and a mask [B, N], and return a context
vector [B, D] and weights [B, N] that are zero on masked positions and sum to one.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 that gives exactly zero weight to positions where mask is False."""
    assert scores.shape == mask.shape, f"scores {tuple(scores.shape)} vs mask {tuple(mask.shape)}"
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=1)
    # A row with no real position would be all NaN; such rows only occur in padding slots.
    return torch.nan_to_num(weights, nan=0.0)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015: score = v^T tanh(W_k values + W_q query)."""

    def __init__(self, query_dim: int, value_dim: int, attn_dim: int):
        super().__init__()
        self.key_proj = nn.Linear(value_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim)
        self.energy = nn.Linear(attn_dim, 1, bias=False)

    def precompute_keys(self, values: torch.Tensor) -> torch.Tensor:
        """Keys [B, N, A]: the query-independent half of the score, computed once per input."""
        return self.key_proj(values)

    def forward(
        self, query: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.precompute_keys(values) if keys is None else keys  # [B, N, A]
        scores = self.energy(torch.tanh(keys + self.query_proj(query).unsqueeze(1))).squeeze(-1)  # [B, N]
        weights = masked_softmax(scores, mask)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, D]
        return context, weights


class LocationAttention(AdditiveAttention):
    """Chorowski et al. 2015: additive attention that also sees where it attended last step.

    score = v^T tanh(W_k values + W_q query + U (F * prev)): the previous weights prev [B, N]
    are convolved with `filters` kernels of width `kernel`, so the score knows the previous
    alignment and moves forward along the input (speech, where content alone is ambiguous).
    Callers keep prev in their decoder state; `None` (no previous step) means zeros.
    """

    def __init__(self, query_dim: int, value_dim: int, attn_dim: int, filters: int = 10, kernel: int = 31):
        super().__init__(query_dim, value_dim, attn_dim)
        assert kernel % 2 == 1, f"the location kernel width must be odd (centred), got {kernel}"
        self.location_conv = nn.Conv1d(1, filters, kernel, padding=kernel // 2, bias=False)
        self.location_proj = nn.Linear(filters, attn_dim, bias=False)

    def forward(
        self,
        query: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.precompute_keys(values) if keys is None else keys  # [B, N, A]
        prev = values.new_zeros(mask.shape) if prev is None else fit_positions(prev, mask.shape[1])  # [B, N]
        location = self.location_proj(self.location_conv(prev.unsqueeze(1)).transpose(1, 2))  # [B, N, A]
        energy = torch.tanh(keys + location + self.query_proj(query).unsqueeze(1))
        weights = masked_softmax(self.energy(energy).squeeze(-1), mask)  # [B, N]
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, D]
        return context, weights


def fit_positions(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad with zeros or crop dim 1 of a per-position tensor [B, N, ...] to `length`: memory
    grows when a longer input joins the batch, and a state row kept from before must follow."""
    n = tensor.shape[1]
    if n == length:
        return tensor
    if n > length:
        return tensor[:, :length]
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], length - n, *tensor.shape[2:])], dim=1)


class MultiplicativeAttention(nn.Module):
    """Luong et al. 2015: score = query^T values ('dot') or query^T W values ('general')."""

    def __init__(self, query_dim: int, value_dim: int, kind: str = "general"):
        super().__init__()
        assert kind in ("dot", "general"), f"unknown Luong attention kind {kind!r}"
        if kind == "dot":
            assert query_dim == value_dim, f"dot attention needs query_dim == value_dim, got {query_dim}, {value_dim}"
        self.kind = kind
        self.key_proj = nn.Linear(value_dim, query_dim, bias=False) if kind == "general" else None

    def precompute_keys(self, values: torch.Tensor) -> torch.Tensor | None:
        return self.key_proj(values) if self.key_proj is not None else None

    def forward(
        self, query: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if keys is None:
            keys = self.precompute_keys(values)
        keys = values if keys is None else keys  # [B, N, Q]
        scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)  # [B, N]
        weights = masked_softmax(scores, mask)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, D]
        return context, weights


ATTENTION_KINDS = ("bahdanau", "location", "luong_dot", "luong_general")


def build_attention(kind: str, query_dim: int, value_dim: int, attn_dim: int) -> nn.Module:
    """`bahdanau` (additive), `location` (additive + previous alignment), `luong_dot` or
    `luong_general` (multiplicative)."""
    if kind == "bahdanau":
        return AdditiveAttention(query_dim, value_dim, attn_dim)
    if kind == "location":
        return LocationAttention(query_dim, value_dim, attn_dim)
    if kind in ("luong_dot", "luong_general"):
        return MultiplicativeAttention(query_dim, value_dim, kind.removeprefix("luong_"))
    raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTION_KINDS}")
