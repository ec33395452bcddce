"""The attention RNN decoder shared by every task.

Two placements of attention, chosen by the attention kind:
- Bahdanau (additive): attend with the previous top hidden state, feed the context into the
  cell together with the previous output (Show, Attend and Tell; Bahdanau et al.).
- Luong (multiplicative): run the cell first, attend with its new top hidden state, and mix
  context and hidden state into an "attentional" vector; with input feeding that vector is
  fed to the next step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mmserve.plugins.nn.attention import build_attention, fit_positions
from mmserve.plugins.nn.contract import Memory, State

CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
OUTPUT_KINDS = ("categorical", "bernoulli", "gaussian")


@dataclass
class DecoderConfig:
    vocab_size: int
    memory_dim: int
    embed_dim: int = 64
    hidden_dim: int = 256
    attn_dim: int = 128
    cell: str = "lstm"  # rnn | gru | lstm
    num_layers: int = 1
    dropout: float = 0.3
    attention: str = "bahdanau"  # bahdanau | location | luong_dot | luong_general
    input_feeding: bool = True  # Luong only: feed the attentional vector to the next step
    # categorical (token ids) | bernoulli (multi-hot frames) | gaussian (real vectors of
    # vocab_size dims in, mean and log-variance [2 * vocab_size] out)
    output_kind: str = "categorical"
    gate_context: bool = False  # Show-Attend-Tell's beta gate on the context vector

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        assert config.cell in CELLS, f"cell must be one of {sorted(CELLS)}, got {config.cell!r}"
        assert config.output_kind in OUTPUT_KINDS, (
            f"output_kind must be one of {OUTPUT_KINDS}, got {config.output_kind!r}"
        )
        self.config = c = config
        self.luong = c.attention.startswith("luong")
        # Location-aware attention keeps its previous weights in the state as "attn" [B, N].
        self.location = c.attention == "location"
        if c.output_kind == "categorical":
            self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        else:
            self.embed = nn.Linear(c.vocab_size, c.embed_dim)
        self.attention = build_attention(c.attention, c.hidden_dim, c.memory_dim, c.attn_dim)
        extra = (c.hidden_dim if c.input_feeding else 0) if self.luong else c.memory_dim
        sizes = [c.embed_dim + extra] + [c.hidden_dim] * (c.num_layers - 1)
        self.cells = nn.ModuleList(CELLS[c.cell](size, c.hidden_dim) for size in sizes)
        self.init_h = nn.Linear(c.memory_dim, c.hidden_dim * c.num_layers)
        self.init_c = nn.Linear(c.memory_dim, c.hidden_dim * c.num_layers) if c.cell == "lstm" else None
        self.gate = nn.Linear(c.hidden_dim, c.memory_dim) if c.gate_context and not self.luong else None
        self.mix = nn.Linear(c.hidden_dim + c.memory_dim, c.hidden_dim) if self.luong else None
        out_in = c.hidden_dim if self.luong else c.hidden_dim + c.memory_dim + c.embed_dim
        self.dropout = nn.Dropout(c.dropout)
        out_size = 2 * c.vocab_size if c.output_kind == "gaussian" else c.vocab_size
        self.out = nn.Linear(out_in, out_size)

    def prepare_memory(self, values: torch.Tensor, mask: torch.Tensor) -> Memory:
        """Wrap encoder output [B, N, D] as Memory with the attention keys precomputed."""
        assert values.shape[-1] == self.config.memory_dim, (
            f"memory dim {values.shape[-1]} != decoder memory_dim {self.config.memory_dim}"
        )
        return Memory(values=values, mask=mask, keys=self.attention.precompute_keys(values))

    def init_state(self, memory: Memory) -> State:
        """Initial hidden (and cell) state from the masked mean of the memory."""
        c = self.config
        weights = memory.mask.unsqueeze(-1).to(memory.values.dtype)
        mean = (memory.values * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B, D]
        batch = mean.shape[0]
        state: State = {"h": torch.tanh(self.init_h(mean)).view(batch, c.num_layers, c.hidden_dim)}
        if self.init_c is not None:
            state["c"] = torch.tanh(self.init_c(mean)).view(batch, c.num_layers, c.hidden_dim)
        if self.luong and c.input_feeding:
            state["feed"] = mean.new_zeros(batch, c.hidden_dim)
        if self.location:  # no previous step: a uniform alignment over the real positions
            state["attn"] = weights.squeeze(-1) / weights.sum(1).clamp_min(1.0)
        return state

    def _run_cells(self, x: torch.Tensor, state: State) -> State:
        new_h, new_c = [], []
        for layer, cell in enumerate(self.cells):
            h = state["h"][:, layer]
            if self.config.cell == "lstm":
                h, c = cell(x, (h, state["c"][:, layer]))
                new_c.append(c)
            else:
                h = cell(x, h)
            new_h.append(h)
            x = self.dropout(h) if layer < len(self.cells) - 1 else h
        out: State = {"h": torch.stack(new_h, dim=1)}
        if new_c:
            out["c"] = torch.stack(new_c, dim=1)
        return out

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """prev [B] ids or [B, V] frames / vectors -> output [B, V] (logits) or [B, 2V] (mean and
        log-variance, gaussian), new state, attention [B, N]."""
        emb = self.dropout(self.embed(prev))  # [B, E]
        if self.luong:
            x = torch.cat([emb, state["feed"]], dim=1) if self.config.input_feeding else emb
            new_state = self._run_cells(x, state)
            top = new_state["h"][:, -1]  # [B, H]
            context, weights = self.attention(top, memory.values, memory.mask, memory.keys)
            attentional = torch.tanh(self.mix(torch.cat([context, top], dim=1)))  # [B, H]
            if self.config.input_feeding:
                new_state["feed"] = attentional
            logits = self.out(self.dropout(attentional))
        else:
            query = state["h"][:, -1]
            if self.location:
                prev_attn = fit_positions(state["attn"], memory.mask.shape[1])  # [B, N]
                context, weights = self.attention(query, memory.values, memory.mask, memory.keys, prev_attn)
            else:
                context, weights = self.attention(query, memory.values, memory.mask, memory.keys)  # [B, D], [B, N]
            if self.gate is not None:
                context = torch.sigmoid(self.gate(query)) * context
            new_state = self._run_cells(torch.cat([emb, context], dim=1), state)
            top = new_state["h"][:, -1]
            logits = self.out(self.dropout(torch.cat([top, context, emb], dim=1)))
            if self.location:
                new_state["attn"] = weights
        return logits, new_state, weights

    def forward_teacher(self, memory: Memory, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs [B, T] (or [B, T, V]) -> logits [B, T, V], attention [B, T, N]."""
        state = self.init_state(memory)
        all_logits, all_weights = [], []
        for t in range(inputs.shape[1]):
            logits, state, weights = self.step(inputs[:, t], state, memory)
            all_logits.append(logits)
            all_weights.append(weights)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)
