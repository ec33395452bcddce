"""The unpacked bidirectional RNN gives what a packed one gives (outputs and gradients), for
both cells, several layers and inter-layer dropout, and each sequence as if it ran alone."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmserve.plugins.nn.birnn import bidirectional_rnn, reverse_within_lengths


def packed_reference(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def test_reverse_within_lengths_keeps_padding_in_place():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_within_lengths(x, torch.tensor([3, 5]))
    assert out.squeeze(-1).tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_within_lengths(out, torch.tensor([3, 5])), x)  # its own inverse


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers", [1, 2])
def test_matches_packing_outputs_and_gradients(cell, layers):
    torch.manual_seed(0)
    rnn = cell(6, 5, num_layers=layers, batch_first=True, bidirectional=True)
    x = torch.randn(4, 9, 6, requires_grad=True)
    lengths = torch.tensor([9, 4, 1, 7])
    ours, theirs = bidirectional_rnn(rnn, x, lengths), packed_reference(rnn, x, lengths)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours[1, 4:].abs().sum() == 0 and ours[2, 1:].abs().sum() == 0  # zero past each length
    weights = torch.randn_like(ours)  # a loss that weighs every output differently
    inputs = [x, *rnn.parameters()]
    for g_ours, g_theirs in zip(torch.autograd.grad((ours * weights).sum(), inputs),
                                torch.autograd.grad((theirs * weights).sum(), inputs)):  # fmt: skip
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-5)


def test_padding_never_reaches_a_real_frame():
    torch.manual_seed(1)
    rnn = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(1, 5, 3)
    padded = torch.cat([x, torch.full((1, 3, 3), 1e3)], dim=1)  # large values past the length
    alone = bidirectional_rnn(rnn, x, torch.tensor([5]))
    torch.testing.assert_close(bidirectional_rnn(rnn, padded, torch.tensor([5]))[:, :5], alone)


def test_inter_layer_dropout_applies_in_training_only():
    torch.manual_seed(2)
    rnn = nn.GRU(3, 4, num_layers=2, dropout=0.5, batch_first=True, bidirectional=True)
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 3])
    rnn.eval()
    torch.testing.assert_close(bidirectional_rnn(rnn, x, lengths), packed_reference(rnn, x, lengths), rtol=1e-5, atol=1e-6)
    rnn.train()
    assert not torch.allclose(bidirectional_rnn(rnn, x, lengths), bidirectional_rnn(rnn, x, lengths))


def test_other_shapes_fall_back_to_packing():
    torch.manual_seed(3)
    rnn = nn.LSTM(3, 4, batch_first=True, bidirectional=True, proj_size=2)
    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 2])
    torch.testing.assert_close(bidirectional_rnn(rnn, x, lengths), packed_reference(rnn, x, lengths))
