"""The music model: a BiLSTM/BiGRU encoder over a primer or melody, the shared attention RNN
decoder over time steps, and an output head over the notes of each step.

Two heads:
- `serial` (the model we serve): the notes of a step are emitted low -> high, then <step>,
  by a categorical "note head" conditioned on the decoder's step features and on the notes
  already chosen in the step. Pitches that cannot follow are masked inside `step`, so any
  decoding strategy respects the serialisation, and log p(step) is exactly the sum of its
  tokens' log-probabilities (the <step> token included).
- `bernoulli` (the baseline row): 88 independent sigmoids per step, the decoder's own output.

The decoder runs once per time step; with the serial head, `step` is called once per token
and the decoder only advances on <bos>/<step> tokens (the state carries the open step).

Configuration and modules only; no file I/O (artifacts live in checkpoint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmserve.plugins.music.tokens import (
    BOS_ID,
    EOS_ID,
    FIRST_PITCH_ID,
    MAX_NOTES_PER_STEP,
    NUM_PITCHES,
    PAD_ID,
    STEP_ID,
    VOCAB_SIZE,
    allowed_next,
)
from mmserve.plugins.nn.birnn import bidirectional_rnn
from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.heads import BernoulliHead, CategoricalHead

HEADS = ("serial", "bernoulli")
SERIAL_STATE = ("features", "frame", "last", "steps_left")  # the serial head's own state entries
NO_LIMIT = 1 << 30  # steps_left of a row generated without a step budget


@dataclass
class EncoderConfig:
    cell: str = "lstm"  # lstm | gru (bidirectional)
    embed_dim: int = 64
    hidden_dim: int = 128  # per direction
    num_layers: int = 1
    memory_dim: int = 128


@dataclass
class NoteHeadConfig:
    hidden_dim: int = 256
    last_embed_dim: int = 32
    dropout: float = 0.3


@dataclass
class MusicConfig:
    head: str = "serial"  # serial | bernoulli
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig | None = None  # vocab_size (= 88 frame units) / memory_dim filled in
    notes: NoteHeadConfig = field(default_factory=NoteHeadConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "encoder": asdict(self.encoder),
            "decoder": self.decoder.to_dict() if self.decoder else None,
            "notes": asdict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MusicConfig:
        decoder = DecoderConfig(**data["decoder"]) if data.get("decoder") else None
        return cls(
            head=data["head"],
            encoder=EncoderConfig(**data["encoder"]),
            decoder=decoder,
            notes=NoteHeadConfig(**data["notes"]),
        )


@dataclass
class MusicBatch:
    """Padded primers (or melodies) for the encoder and, in training, target steps.

    source [B, P, 88] with source_lengths [B] (0 = no primer: the learned null memory);
    target [B, T, 88] with target_lengths [B] (T = 0 when serving).
    """

    source: torch.Tensor
    source_lengths: torch.Tensor
    target: torch.Tensor
    target_lengths: torch.Tensor
    budget: torch.Tensor | None = None  # [B] steps to generate before <eos> (0 = no limit); serving only

    def to(self, device: torch.device | str) -> MusicBatch:
        budget = self.budget.to(device) if self.budget is not None else None
        return MusicBatch(*(t.to(device) for t in (self.source, self.source_lengths, self.target, self.target_lengths)), budget)


def collate_pieces(items: list[tuple[torch.Tensor, torch.Tensor]], budget: list[int] | None = None) -> MusicBatch:
    """items: (source roll [P, 88], target roll [T, 88]) pairs -> one padded MusicBatch."""
    assert items, "collate needs at least one item"
    sources, targets = zip(*items)
    steps = torch.tensor(budget, dtype=torch.long) if budget is not None else None
    return MusicBatch(_pad(sources), _lengths(sources), _pad(targets), _lengths(targets), steps)


def _lengths(rolls: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.tensor([r.shape[0] for r in rolls], dtype=torch.long)


def _pad(rolls: tuple[torch.Tensor, ...]) -> torch.Tensor:
    longest = max(r.shape[0] for r in rolls)
    out = torch.zeros(len(rolls), longest, NUM_PITCHES)
    for i, roll in enumerate(rolls):
        assert roll.dim() == 2 and roll.shape[1] == NUM_PITCHES, f"roll must be [T, 88], got {tuple(roll.shape)}"
        out[i, : roll.shape[0]] = roll
    return out


class FrameEncoder(nn.Module):
    """source rolls [B, P, 88] -> memory values [B, max(P,1), D] and mask; empty rows get the
    learned null memory (one position), so continuation without a primer still has a memory."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        assert config.cell in ("lstm", "gru"), f"encoder cell must be lstm or gru, got {config.cell!r}"
        self.config = c = config
        self.embed = nn.Linear(NUM_PITCHES, c.embed_dim)
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        self.rnn = rnn(c.embed_dim, c.hidden_dim, c.num_layers, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * c.hidden_dim, c.memory_dim)
        self.null = nn.Parameter(torch.randn(c.memory_dim) * 0.02)

    def forward(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = source.shape[0]
        positions = max(int(lengths.max()) if batch else 0, 1)
        values = self.null.expand(batch, positions, -1).clone()  # [B, N, D]
        mask = torch.zeros(batch, positions, dtype=torch.bool, device=source.device)
        mask[:, 0] = True  # an empty row keeps exactly the null position
        real = (lengths > 0).nonzero(as_tuple=True)[0]
        if real.numel():
            src, lens = source[real], lengths[real]
            out = bidirectional_rnn(self.rnn, torch.tanh(self.embed(src[:, :positions])), lens)  # [R, N, 2H]
            values = values.index_copy(0, real, self.project(out))
            steps = torch.arange(positions, device=source.device).unsqueeze(0)
            mask = mask.index_copy(0, real, steps < lens.unsqueeze(1))
        return values, mask


class NoteHead(nn.Module):
    """Token logits for the next note of a step from the step features [B, F], the notes
    already in the step [B, 88] and the highest of them (-1 when none).

    The decoder's per-pitch logits (inside the features) are added to the pitch logits, so the
    head starts as the Bernoulli model and learns how notes of one step depend on each other.
    """

    def __init__(self, feature_dim: int, config: NoteHeadConfig):
        super().__init__()
        self.last_embed = nn.Embedding(NUM_PITCHES + 1, config.last_embed_dim)  # index 0: empty step
        self.hidden = nn.Linear(feature_dim + NUM_PITCHES + config.last_embed_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_dim, VOCAB_SIZE)

    def forward(self, features: torch.Tensor, partial: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """features [L, F] (decoder logits in the last 88 columns), partial [L, 88], last [L] -> masked logits [L, V]."""
        x = torch.cat([features, partial, self.last_embed(last + 1)], dim=-1)
        logits = self.out(self.dropout(torch.tanh(self.hidden(x))))  # [L, V]
        pitch_bias = F.pad(features[:, -NUM_PITCHES:], (FIRST_PITCH_ID, 0))  # [L, V]
        logits = logits + pitch_bias
        return logits.masked_fill(~allowed_next(last), float("-inf"))


class MusicModel(EncoderDecoder):
    """Encoder + shared AttentionDecoder (one step per time step) + serial or Bernoulli head."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID
    trained_for = "quarter"  # quarter (continuation, 1 step per beat) | harmony (melody -> ATB, 4 steps per beat)

    def __init__(self, config: MusicConfig):
        super().__init__()
        assert config.head in HEADS, f"head must be one of {HEADS}, got {config.head!r}"
        decoder = config.decoder or DecoderConfig(vocab_size=NUM_PITCHES, memory_dim=config.encoder.memory_dim)
        assert decoder.vocab_size == NUM_PITCHES, f"the decoder reads and scores 88-unit frames, got {decoder.vocab_size}"
        assert decoder.output_kind == "bernoulli", "the decoder's input is a multi-hot frame: output_kind=bernoulli"
        assert decoder.memory_dim == config.encoder.memory_dim, "decoder memory_dim must equal encoder memory_dim"
        self.config = MusicConfig(head=config.head, encoder=config.encoder, decoder=decoder, notes=config.notes)
        # Serial: token ids, any categorical strategy (the mask lives in `step`). Bernoulli: frames.
        self.head = CategoricalHead(BOS_ID, EOS_ID) if config.head == "serial" else BernoulliHead(NUM_PITCHES)
        self.encoder = FrameEncoder(config.encoder)
        self.decoder = AttentionDecoder(decoder)
        self.feature_dim = decoder.hidden_dim + NUM_PITCHES
        self.notes = NoteHead(self.feature_dim, config.notes) if config.head == "serial" else None

    # ---- the contract -------------------------------------------------------------------
    def collate(self, items: list[Any]) -> MusicBatch:  # type: ignore[override]
        """items: source rolls [P, 88] (P may be 0), or (roll, steps to generate) pairs ->
        MusicBatch with empty targets."""
        pairs = [item if isinstance(item, tuple) else (item, 0) for item in items]
        rolls = [(roll, torch.zeros(0, NUM_PITCHES)) for roll, _ in pairs]
        return collate_pieces(rolls, [int(steps) for _, steps in pairs])

    def encode(self, batch: MusicBatch) -> Memory:  # type: ignore[override]
        """Memory values [B, N, D + 1]: the encoder's D features plus, in the last channel, the
        number of steps to generate (0 = no limit). The contract's Memory has no per-row
        scalar field, so the step budget rides along with the values; `step` strips it."""
        values, mask = self.encoder(batch.source, batch.source_lengths)  # [B, N, D], [B, N]
        memory = self.decoder.prepare_memory(values, mask)
        budget = batch.budget if batch.budget is not None else torch.zeros(values.shape[0], dtype=torch.long)
        channel = budget.to(values).view(-1, 1, 1).expand(-1, values.shape[1], 1)
        return Memory(values=torch.cat([values, channel], dim=-1), mask=memory.mask, keys=memory.keys)

    @staticmethod
    def _decoder_memory(memory: Memory) -> Memory:
        return Memory(values=memory.values[..., :-1], mask=memory.mask, keys=memory.keys)

    def init_state(self, memory: Memory) -> State:
        state = self.decoder.init_state(self._decoder_memory(memory))
        if self.notes is not None:
            batch, device = memory.batch_size, memory.values.device
            state["features"] = memory.values.new_zeros(batch, self.feature_dim)
            state["frame"] = memory.values.new_zeros(batch, NUM_PITCHES)  # notes of the open step
            state["last"] = torch.full((batch,), -1, dtype=torch.long, device=device)
            budget = memory.values[:, 0, -1].round().long()
            # budget > 0: that many steps; 0: no limit; < 0: none at all (the row only ends).
            state["steps_left"] = torch.where(budget != 0, budget.clamp(min=0), torch.full_like(budget, NO_LIMIT))
        return state

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Bernoulli: prev frame [B, 88] -> logits [B, 88]. Serial: prev token [B] -> masked logits [B, V]."""
        memory = self._decoder_memory(memory)
        if self.notes is None:
            return self.decoder.step(prev, state, memory)
        assert prev.dim() == 1, f"the serial head takes token ids [B], got {tuple(prev.shape)}"
        decoder_keys = [k for k in state if k not in SERIAL_STATE]
        frame, last, features = state["frame"], state["last"], state["features"]
        advance = (prev == BOS_ID) | (prev == STEP_ID)  # [B]: a new time step begins
        is_pitch = prev >= FIRST_PITCH_ID
        # Rows that just closed a step feed the finished frame to the decoder (zeros after <bos>).
        dec_logits, dec_state, attention = self.decoder.step(frame, {k: state[k] for k in decoder_keys}, memory)
        new_features = torch.cat([dec_state["h"][:, -1], dec_logits], dim=1)  # [B, F]
        new_state: State = {}
        for key in decoder_keys:
            keep = advance.view(-1, *([1] * (state[key].dim() - 1)))
            new_state[key] = torch.where(keep, dec_state[key], state[key])
        new_state["features"] = torch.where(advance.unsqueeze(1), new_features, features)
        pitch = (prev - FIRST_PITCH_ID).clamp(0, NUM_PITCHES - 1)
        added = F.one_hot(pitch, NUM_PITCHES).to(frame.dtype) * is_pitch.unsqueeze(1).to(frame.dtype)
        new_state["frame"] = torch.where(advance.unsqueeze(1), torch.zeros_like(frame), frame + added)
        new_state["last"] = torch.where(advance, torch.full_like(last, -1), torch.where(is_pitch, pitch, last))
        new_state["steps_left"] = state["steps_left"] - (prev == STEP_ID).long()
        logits = self.notes(new_state["features"], new_state["frame"], new_state["last"])
        # A step holding MAX_NOTES_PER_STEP notes may only close, which bounds a step's tokens
        # (TOKENS_PER_STEP) and so a request's tokens by its steps. No chorale step comes close.
        full = (new_state["frame"].sum(dim=1) >= MAX_NOTES_PER_STEP).unsqueeze(1)  # [B, 1]
        logits = logits.masked_fill(full & (torch.arange(logits.shape[1], device=logits.device) >= FIRST_PITCH_ID), float("-inf"))
        # A row that has written all its requested steps may only end: <eos> is then certain.
        done = (new_state["steps_left"] <= 0).unsqueeze(1)
        only_eos = torch.full_like(logits, float("-inf"))
        only_eos[:, EOS_ID] = 0.0
        return torch.where(done, only_eos, logits), new_state, attention

    # ---- teacher forcing ----------------------------------------------------------------
    def step_features(self, batch: MusicBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder over every target step: features [B, T, F] and per-pitch logits [B, T, 88].
        Step t reads step t-1's frame (zeros for t = 0)."""
        memory = self._decoder_memory(self.encode(batch))
        target = batch.target  # [B, T, 88]
        inputs = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1)
        state = self.decoder.init_state(memory)
        tops, logits = [], []
        for t in range(target.shape[1]):
            step_logits, state, _ = self.decoder.step(inputs[:, t], state, memory)
            tops.append(state["h"][:, -1])
            logits.append(step_logits)
        dec_logits = torch.stack(logits, dim=1)  # [B, T, 88]
        return torch.cat([torch.stack(tops, dim=1), dec_logits], dim=-1), dec_logits

    def step_log_probs(self, batch: MusicBatch) -> torch.Tensor:
        """log p(step t | steps < t, source) for every target step: [B, T] (0 on padding)."""
        features, dec_logits = self.step_features(batch)
        batch_size, steps = batch.target.shape[:2]
        real = torch.arange(steps, device=dec_logits.device).unsqueeze(0) < batch.target_lengths.unsqueeze(1)  # [B, T]
        if self.notes is None:
            flat = self.head.log_prob(dec_logits.reshape(-1, NUM_PITCHES), batch.target.reshape(-1, NUM_PITCHES))
            return flat.view(batch_size, steps) * real
        step_index, targets, partial, last = serial_targets(batch.target, real)
        logits = self.notes(features.reshape(batch_size * steps, -1)[step_index], partial, last)  # [L, V]
        token_log_p = self.head.log_prob(logits, targets)  # [L]: log-softmax of the masked logits
        log_p = torch.zeros(batch_size * steps, device=logits.device).index_add(0, step_index, token_log_p)
        return log_p.view(batch_size, steps)


def serial_targets(
    target: torch.Tensor, real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every token of every real step, in serial order, for the note head in one batch.

    target [B, T, 88], real [B, T] -> step index into B*T [L], token ids [L], the notes of the
    step before each token [L, 88], and the highest of them [L] (-1 when none).
    """
    batch, steps = real.shape
    flat = target.reshape(batch * steps, NUM_PITCHES) * real.reshape(-1, 1).to(target.dtype)
    note_step, note_pitch = (flat > 0.5).nonzero(as_tuple=True)  # row-major: low -> high within a step
    end_step = real.reshape(-1).nonzero(as_tuple=True)[0]
    step_index = torch.cat([note_step, end_step])
    position = torch.cat([note_pitch, torch.full_like(end_step, NUM_PITCHES)])  # <step> sorts after all pitches
    order = torch.argsort(step_index * (NUM_PITCHES + 1) + position)
    step_index, position = step_index[order], position[order]
    tokens = torch.where(position == NUM_PITCHES, torch.full_like(position, STEP_ID), position + FIRST_PITCH_ID)
    below = torch.arange(NUM_PITCHES, device=target.device).unsqueeze(0) < position.unsqueeze(1)  # [L, 88]
    partial = flat[step_index] * below.to(flat.dtype)
    weights = torch.arange(1, NUM_PITCHES + 1, device=target.device, dtype=flat.dtype)
    last = (partial * weights).max(dim=1).values.long() - 1  # highest note so far, -1 when none
    return step_index, tokens, partial, last
