"""Bidirectional LSTM / GRU over padded batches of different lengths, without packing.

Packing keeps padding out of the backward direction, but on the CPU a packed RNN's autograd
slices the packed input once per time step and each slice's gradient is a zero-filled tensor
of the whole input: training time grows with the square of the length (on the speech
listener, over half of a training step went to filling those zeros). Here each direction runs
as a plain unpacked RNN, the backward one over each sequence reversed within its own length, so
padding still never reaches a real frame's output: the same result as packing (same weights,
so checkpoints are unchanged), with one gather per direction in place of the per-step slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] with each row's first lengths[b] steps reversed and its padding left in place."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, T]
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, T]
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _run_direction(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
    weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)
    if isinstance(rnn, nn.LSTM):
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, rnn.training, False, True)[0]
    return torch.gru(x, h0, weights, True, 1, 0.0, rnn.training, False, True)[0]


def bidirectional_rnn(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A batch-first bidirectional LSTM / GRU module run over x [B, T, D] -> [B, T, 2H]: equal
    to running each sequence alone (padding reaches neither direction), zero past each length."""
    mask = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).unsqueeze(-1)
    if not _plain(rnn):
        packed = pack_padded_sequence(x, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0] * mask
    for layer in range(rnn.num_layers):
        if layer > 0:  # nn.LSTM / nn.GRU's dropout sits between layers
            x = F.dropout(x, rnn.dropout, rnn.training)
        forward = _run_direction(rnn, x, layer, "")
        backward = _run_direction(rnn, reverse_within_lengths(x, lengths), layer, "_reverse")
        x = torch.cat([forward, reverse_within_lengths(backward, lengths)], dim=-1) * mask
    return x


def _plain(rnn: nn.Module) -> bool:
    """The modules run unpacked: bidirectional and batch-first, with biases and no projection
    (anything else falls back to packing)."""
    return (isinstance(rnn, (nn.LSTM, nn.GRU)) and rnn.bidirectional and rnn.batch_first and rnn.bias
            and getattr(rnn, "proj_size", 0) == 0)  # fmt: skip
