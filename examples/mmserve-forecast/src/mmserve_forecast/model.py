"""Encoder (BiGRU over the normalised history) + the shared attention decoder (Gaussian output).

Units: `prev` and the head's output are in the series' own units, so every streamed value and
every result item is already a forecast the client can use, and `score` is the log-likelihood
of the path in those units. Inside, the model works on the history normalised by its own mean
and standard deviation: `encode` measures them, `init_state` carries them (and the last observed
value) in the decoder state, and `step` normalises `prev` and denormalises its output.

The first step's `prev` is the last observed value. `head.start` cannot know it (it gives zeros
for every row), so the state carries `last` and a `started` flag and the first step uses `last`
instead of `prev`: the engine's loop stays generic and the model owns what it means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.heads import GaussianHead

STATS = ("loc", "scale", "last")  # per-row statistics the decoder state carries, each [B, 1]


class ForecastHead(GaussianHead):
    """GaussianHead(dim=1) with a log-variance range that spans the accepted series scales.

    The model clamps its log-variance in normalised units to [-10, 6]; in the series' units that
    shifts by 2 log(scale), and inputs are bounded (|x| <= 1e9, scale >= 1e-4), so [-40, 50]
    never cuts a real prediction, while the base range [-12, 8] would for series whose std is
    above ~50 (sampled spread and score would be wrong; the mean path would not).
    """

    MIN_LOG_VAR, MAX_LOG_VAR = -40.0, 50.0


@dataclass
class ForecastConfig:
    encoder_hidden: int = 32
    decoder_hidden: int = 64
    embed_dim: int = 16
    attn_dim: int = 32
    horizon: int = 24  # the horizon it was trained on (the task's default max_length)
    min_log_var: float = -10.0  # normalised units
    max_log_var: float = 6.0

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(
            vocab_size=1,  # one real value per step
            memory_dim=2 * self.encoder_hidden,
            embed_dim=self.embed_dim,
            hidden_dim=self.decoder_hidden,
            attn_dim=self.attn_dim,
            cell="gru",
            dropout=0.0,
            attention="bahdanau",
            output_kind="gaussian",
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SeriesBatch:
    """Histories padded on the right: values [B, N] in the series' units, lengths [B]."""

    values: torch.Tensor
    lengths: torch.Tensor


@dataclass
class ForecastMemory(Memory):
    """Memory plus each row's statistics [B, 3] (loc, scale, last observed value).

    `init_state` copies the statistics into the decoder state, which is what the engine carries
    from then on (it joins memories with `Memory.concat`, which keeps the base fields only).
    """

    stats: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> ForecastMemory:
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return ForecastMemory(**{k: None if v is None else v.index_select(0, index) for k, v in picked.items()})


def normalise_stats(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and standard deviation per row, each [B, 1]; the scale has a floor so a
    constant series normalises to zeros instead of dividing by zero."""
    weights = mask.to(values.dtype)
    count = weights.sum(1, keepdim=True).clamp_min(1.0)
    loc = (values * weights).sum(1, keepdim=True) / count
    var = (((values - loc) * weights) ** 2).sum(1, keepdim=True) / count
    floor = 1e-4 * (loc.abs() + 1.0)
    return loc, torch.maximum(var.sqrt(), floor)


class ForecastModel(EncoderDecoder):
    def __init__(self, config: ForecastConfig):
        super().__init__()
        self.config = config
        self.head = ForecastHead(dim=1)
        self.encoder = nn.GRU(2, config.encoder_hidden, batch_first=True, bidirectional=True)
        self.decoder = AttentionDecoder(config.decoder_config())

    def collate(self, items: list[torch.Tensor]) -> SeriesBatch:
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
        values = torch.zeros(len(items), int(lengths.max()))
        for i, x in enumerate(items):
            values[i, : len(x)] = x
        return SeriesBatch(values, lengths)

    def encode(self, batch: SeriesBatch) -> ForecastMemory:
        values, lengths = batch.values, batch.lengths  # [B, N], [B]
        positions = torch.arange(values.shape[1], device=values.device)
        mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, N]
        loc, scale = normalise_stats(values, mask)
        z = ((values - loc) / scale) * mask  # [B, N]
        # Second feature: how far back from the end a position is (0 = last), so attention can
        # find "one period ago" whatever the history's length.
        back = (lengths.unsqueeze(1) - 1 - positions.unsqueeze(0)).clamp_min(0).float() / 64.0
        features = torch.stack([z, back * mask], dim=-1)  # [B, N, 2]
        if bool((lengths == values.shape[1]).all()):  # no padding (training batches): skip packing
            out, _ = self.encoder(features)  # [B, N, 2H]
        else:  # packed, so the backward direction starts at each row's own last value
            packed = nn.utils.rnn.pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=values.shape[1])
        memory = self.decoder.prepare_memory(out, mask)
        last = values.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1))  # [B, 1]
        return ForecastMemory(memory.values, memory.mask, memory.keys, stats=torch.cat([loc, scale, last], dim=1))

    def init_state(self, memory: Memory) -> State:
        assert isinstance(memory, ForecastMemory) and memory.stats is not None, (
            "init_state needs the ForecastMemory that encode returned (it carries the statistics)"
        )
        state = self.decoder.init_state(memory)
        for i, name in enumerate(STATS):
            state[name] = memory.stats[:, i : i + 1]
        state["started"] = torch.zeros_like(memory.stats[:, :1])  # 0 until the first step ran
        return state

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """prev [B, 1] (series units; ignored on the first step) -> output [B, 2] = mean and
        log-variance in series units, new state, attention [B, N]."""
        loc, scale, started = state["loc"], state["scale"], state["started"]
        prev = torch.where(started > 0, prev.to(loc.dtype), state["last"])  # [B, 1]
        z = (prev - loc) / scale
        decoder_state = {k: v for k, v in state.items() if k not in (*STATS, "started")}
        out, decoder_state, attention = self.decoder.step(z, decoder_state, memory)  # [B, 2]
        delta, log_var = out.split(1, dim=-1)
        log_var = log_var.clamp(self.config.min_log_var, self.config.max_log_var)
        # The mean is a step from the previous value (the easy part of a forecast is "about
        # where it was"); both move back to series units here.
        output = torch.cat([prev + scale * delta, log_var + 2 * scale.log()], dim=-1)
        new_state = {**decoder_state, "loc": loc, "scale": scale, "last": state["last"]}
        new_state["started"] = torch.ones_like(started)
        return output, new_state, attention

    def teacher_forced_log_prob(self, batch: SeriesBatch, future: torch.Tensor) -> torch.Tensor:
        """log p(future | history) per row [B] in normalised units (scale-free, so series of any
        size weigh the same), summed over the horizon; future [B, H] in series units."""
        memory = self.encode(batch)
        state = self.init_state(memory)
        prev = self.head.start(future.shape[0], future.device)
        total = torch.zeros(future.shape[0], device=future.device)
        for t in range(future.shape[1]):
            output, state, _ = self.step(prev, state, memory)
            target = future[:, t : t + 1]
            total = total + self.head.log_prob(output, target)
            prev = target
        # head.log_prob is in series units; the density of z = (x - loc) / scale is scale times
        # larger: log p(z) = log p(x) + log(scale) per step.
        return total + future.shape[1] * memory.stats[:, 1].log()
