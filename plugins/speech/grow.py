"""Growing a trained speech model into a bigger one that starts out computing the same thing.

Three ways to grow, all function-preserving so a stage continues from where the last one
stopped instead of from scratch:

- more listener blocks: each new residual BiLSTM block starts as the identity (model.py);
- a wider speller, or wider listener blocks: the new hidden units get fresh incoming weights
  but zero outgoing ones (into the gates, and into whatever reads the LSTM: the speller's
  attention query and output layer, a block's output projection), so at the start nothing
  downstream sees them. Their outgoing weights still get gradients, so they start to learn
  at the first step (Net2Net's "zero fan-out" widening; Chen et al. 2016).
"""

from __future__ import annotations

import torch

from mmserve.plugins.speech.model import ListenAttendSpell

GROWN_LISTENER_PREFIXES = ("listener.blocks4.", "listener.blocks8.")
LSTM_GATES = 4  # torch packs an LSTM cell's weights as the rows of its i, f, g, o gates
BIDIRECTIONAL_SUFFIXES = ("_l0", "_l0_reverse")  # a one-layer nn.LSTM's two directions

State = dict[str, torch.Tensor]


def grow_from(model: ListenAttendSpell, trained: ListenAttendSpell) -> None:
    """Copy `trained`'s weights into `model`, which has the same settings or more listener
    blocks, wider ones and/or a wider speller; what `trained` lacks starts as described in the
    module docstring, so `model` computes what `trained` did."""
    state, fresh = trained.state_dict(), model.state_dict()
    old_width, new_width = trained.decoder.config.hidden_dim, model.decoder.config.hidden_dim
    if new_width != old_width:
        state = widened_speller_state(state, fresh, old_width, new_width)
    old_width, new_width = trained.listener.config.block_hidden, model.listener.config.block_hidden
    trained_has_blocks = trained.listener.config.blocks_4x + trained.listener.config.blocks_8x > 0
    if trained_has_blocks and new_width != old_width:
        state = widened_listener_blocks_state(state, fresh, old_width, new_width)
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_blocks = [k for k in missing if k.startswith(GROWN_LISTENER_PREFIXES)]
    assert not unexpected and len(new_blocks) == len(missing), (
        f"init_from differs from these settings beyond growing (more or wider listener blocks, a wider speller): "
        f"missing {sorted(set(missing) - set(new_blocks))}, unexpected {sorted(unexpected)}"
    )


def widened_speller_state(trained: State, fresh: State, old_width: int, new_width: int) -> State:
    """`trained`'s state dict with the speller's hidden width `old_width` -> `new_width`. The new
    units' incoming weights come from `fresh` (the wider model's own random start); every
    weight that reads a new unit is zero."""
    assert new_width > old_width, f"a speller can only grow wider ({old_width} -> {new_width})"
    assert fresh["decoder.init_h.weight"].shape[0] == new_width, "only a one-layer speller can be widened"
    assert "decoder.init_c.weight" in fresh, "only an LSTM speller can be widened"
    state = dict(trained)
    cell = "decoder.cells.0."
    widen_lstm(state, trained, fresh, [cell + name for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")],
               old_width, new_width)  # fmt: skip
    for key in ("decoder.init_h.weight", "decoder.init_h.bias", "decoder.init_c.weight", "decoder.init_c.bias"):
        state[key] = fresh[key].detach().clone()
        state[key][:old_width] = trained[key]
    key = "decoder.attention.query_proj.weight"  # the attention query does not read the new units yet ...
    state[key] = torch.zeros_like(fresh[key])
    state[key][:, :old_width] = trained[key]
    key = "decoder.out.weight"  # ... nor does the output layer, which reads [hidden, context, embedding]
    state[key] = torch.zeros_like(fresh[key])
    state[key][:, :old_width] = trained[key][:, :old_width]
    state[key][:, new_width:] = trained[key][:, old_width:]
    check_shapes(state, fresh)
    return state


def widened_listener_blocks_state(trained: State, fresh: State, old_width: int, new_width: int) -> State:
    """`trained`'s state dict with every residual block's BiLSTM `old_width` -> `new_width` units
    a direction; the block's output projection does not read the new units yet."""
    assert new_width > old_width, f"listener blocks can only grow wider ({old_width} -> {new_width})"
    state = dict(trained)
    blocks = sorted({".".join(key.split(".")[:3]) for key in trained if key.startswith(GROWN_LISTENER_PREFIXES)})
    for block in blocks:
        for suffix in BIDIRECTIONAL_SUFFIXES:
            keys = [f"{block}.lstm.{name}{suffix}" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            widen_lstm(state, trained, fresh, keys, old_width, new_width)
        key = f"{block}.out.weight"  # reads [forward units, backward units]
        state[key] = torch.zeros_like(fresh[key])
        state[key][:, :old_width] = trained[key][:, :old_width]
        state[key][:, new_width : new_width + old_width] = trained[key][:, old_width:]
    check_shapes(state, fresh)
    return state


def widen_lstm(state: State, trained: State, fresh: State, keys: list[str], old_width: int, new_width: int) -> None:
    """Write into `state` one LSTM's [weight_ih, weight_hh, bias_ih, bias_hh] (named by `keys`)
    widened `old_width` -> `new_width`: the trained units keep their weights, the new ones take
    `fresh`'s, and no gate reads a new unit's hidden state yet."""
    weight_ih, weight_hh, bias_ih, bias_hh = keys
    old_rows = torch.cat([gate * new_width + torch.arange(old_width) for gate in range(LSTM_GATES)])
    for key in (weight_ih, bias_ih, bias_hh):
        state[key] = fresh[key].detach().clone()
        state[key][old_rows] = trained[key]
    state[weight_hh] = fresh[weight_hh].detach().clone()
    state[weight_hh][:, old_width:] = 0.0
    state[weight_hh][old_rows, :old_width] = trained[weight_hh]


def check_shapes(state: State, fresh: State) -> None:
    for key, value in state.items():
        if key in fresh:
            assert value.shape == fresh[key].shape, f"{key}: widened to {tuple(value.shape)}, expected {tuple(fresh[key].shape)}"
