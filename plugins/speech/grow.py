"""Growing a trained speech model into a bigger one that starts out computing the same thing.

Two ways to grow, both function-preserving so a stage continues from where the last one
stopped instead of from scratch:

- more listener blocks: each new residual BiLSTM block starts as the identity (model.py);
- a wider speller: the new hidden units get fresh incoming weights but zero outgoing ones
  (into the gates, the attention query and the output layer), so at the start nothing
  downstream sees them. Their outgoing weights still get gradients, so they start to learn
  at the first step (Net2Net's "zero fan-out" widening; Chen et al. 2016).
"""

from __future__ import annotations

import torch

from mmserve.plugins.speech.model import ListenAttendSpell

GROWN_LISTENER_PREFIXES = ("listener.blocks4.", "listener.blocks8.")
LSTM_GATES = 4  # torch packs an LSTM cell's weights as the rows of its i, f, g, o gates


def grow_from(model: ListenAttendSpell, trained: ListenAttendSpell) -> None:
    """Copy `trained`'s weights into `model`, which has the same settings or more listener
    blocks and/or a wider speller; what `trained` lacks starts as described in the module
    docstring, so `model` computes what `trained` did."""
    state = trained.state_dict()
    old_width, new_width = trained.decoder.config.hidden_dim, model.decoder.config.hidden_dim
    if new_width != old_width:
        state = widened_speller_state(state, model.state_dict(), old_width, new_width)
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_blocks = [k for k in missing if k.startswith(GROWN_LISTENER_PREFIXES)]
    assert not unexpected and len(new_blocks) == len(missing), (
        f"init_from differs from these settings beyond added listener blocks and a wider speller: "
        f"missing {sorted(set(missing) - set(new_blocks))}, unexpected {sorted(unexpected)}"
    )


def widened_speller_state(
    trained: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_width: int, new_width: int
) -> dict[str, torch.Tensor]:
    """`trained`'s state dict with the speller's hidden width `old_width` -> `new_width`. The new
    units' incoming weights come from `fresh` (the wider model's own random start); every
    weight that reads a new unit is zero."""
    assert new_width > old_width, f"a speller can only grow wider ({old_width} -> {new_width})"
    assert fresh["decoder.init_h.weight"].shape[0] == new_width, "only a one-layer speller can be widened"
    assert "decoder.init_c.weight" in fresh, "only an LSTM speller can be widened"
    old_rows = torch.cat([gate * new_width + torch.arange(old_width) for gate in range(LSTM_GATES)])
    state = dict(trained)

    def start_from_fresh(key: str) -> torch.Tensor:
        return fresh[key].detach().clone()

    for key in ("decoder.cells.0.weight_ih", "decoder.cells.0.bias_ih", "decoder.cells.0.bias_hh"):
        state[key] = start_from_fresh(key)
        state[key][old_rows] = trained[key]
    key = "decoder.cells.0.weight_hh"
    state[key] = start_from_fresh(key)
    state[key][:, old_width:] = 0.0  # the gates do not read the new units yet ...
    state[key][old_rows, :old_width] = trained[key]
    for key in ("decoder.init_h.weight", "decoder.init_h.bias", "decoder.init_c.weight", "decoder.init_c.bias"):
        state[key] = start_from_fresh(key)
        state[key][:old_width] = trained[key]
    key = "decoder.attention.query_proj.weight"  # ... nor does the attention query ...
    state[key] = torch.zeros_like(fresh[key])
    state[key][:, :old_width] = trained[key]
    key = "decoder.out.weight"  # ... nor the output layer, which reads [hidden, context, embedding]
    state[key] = torch.zeros_like(fresh[key])
    state[key][:, :old_width] = trained[key][:, :old_width]
    state[key][:, new_width:] = trained[key][:, old_width:]
    for key, value in state.items():
        if key in fresh:
            assert value.shape == fresh[key].shape, f"{key}: widened to {tuple(value.shape)}, expected {tuple(fresh[key].shape)}"
    return state
