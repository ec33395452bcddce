"""Output heads: what one decoder step's output means, and how the next output is chosen.

A head belongs to the model (`model.head`). The engine and the search strategies talk only to
the head, so the same decode loop serves tokens, piano-roll frames and real-valued series:

- `start(batch)`: the `prev` fed to the first step;
- `choose(output, sampling)`: the next output per row (greedy / sampled) and its log-probability;
- `log_prob(output, target)`: log p(target | output) per row, for training and exact NLL;
- `ends(choice)`: rows whose sequence ends with this choice (the end is not an output);
- `to_host(choice)` / `item(row)`: the choice as K floats per row (one device-to-host copy per
  step for the whole batch), and one step's JSON item from such a row.

Beam search needs a finite candidate set, so only the categorical head supports it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Sampling:
    """Per-row choice parameters, tensors [B] on the model's device. temperature 0 = greedy.

    `generators` [B] (optional) gives a row its own random stream: a request with a `seed`
    draws only from its generator, so it samples the same outputs whatever rows share its
    batch. Rows without one share a single batched draw.
    """

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    generators: tuple[torch.Generator | None, ...] = ()  # () = no seeded row

    @staticmethod
    def build(
        temperature: list[float],
        top_k: list[int],
        top_p: list[float],
        device: torch.device | str,
        seeds: list[int | None] | None = None,
    ) -> Sampling:
        generators: tuple[torch.Generator | None, ...] = ()
        if seeds is not None and any(s is not None for s in seeds):
            assert len(seeds) == len(temperature), f"{len(seeds)} seeds for {len(temperature)} rows"
            generators = tuple(None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds)
        return Sampling(
            torch.tensor(temperature, dtype=torch.float32, device=device),
            torch.tensor(top_k, dtype=torch.long, device=device),
            torch.tensor(top_p, dtype=torch.float32, device=device),
            generators,
        )

    @staticmethod
    def greedy(batch: int, device: torch.device | str) -> Sampling:
        return Sampling.build([0.0] * batch, [0] * batch, [1.0] * batch, device)

    def select(self, index: torch.Tensor) -> Sampling:
        generators = tuple(self.generators[i] for i in index.tolist()) if self.generators else ()
        return Sampling(self.temperature[index], self.top_k[index], self.top_p[index], generators)

    @staticmethod
    def concat(parts: list[Sampling]) -> Sampling:
        generators: tuple[torch.Generator | None, ...] = ()
        if any(p.generators for p in parts):
            generators = tuple(g for p in parts for g in (p.generators or (None,) * len(p.temperature)))
        return Sampling(
            torch.cat([p.temperature for p in parts]),
            torch.cat([p.top_k for p in parts]),
            torch.cat([p.top_p for p in parts]),
            generators,
        )

    def draw(
        self,
        rows: torch.Tensor,
        sample: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Random draws for the batch rows `rows` [R]. `sample(positions, generator)` draws for
        `positions` (indices into `rows`) along dim 0. Unseeded rows share one call with
        `generator` (torch's default when None); each seeded row gets its own call with its
        own generator, so what it draws never depends on its neighbours."""
        everything = torch.arange(len(rows), device=rows.device)
        if not self.generators:
            return sample(everything, generator)
        own = [(j, self.generators[r]) for j, r in enumerate(rows.tolist()) if self.generators[r] is not None]
        if not own:
            return sample(everything, generator)
        seeded = {j for j, _ in own}
        plain = [j for j in range(len(rows)) if j not in seeded]
        positions, parts = [], []
        if plain:
            index = torch.tensor(plain, device=rows.device)
            positions.append(index)
            parts.append(sample(index, generator))
        for j, own_generator in own:
            index = torch.tensor([j], device=rows.device)
            positions.append(index)
            parts.append(sample(index, own_generator))
        order = torch.cat(positions).argsort()
        return torch.cat(parts)[order]


class OutputHead(ABC):
    """The meaning of a decoder's per-step output. Subclasses set `kind` and `width`."""

    kind: ClassVar[str]
    supports_beam: ClassVar[bool] = False
    width: int  # floats per row that `to_host` gives

    @abstractmethod
    def start(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """`prev` for the first decoding step of `batch` rows."""

    @abstractmethod
    def choose(
        self, output: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next output per row and its log-probability [B] under the unmodified distribution."""

    @abstractmethod
    def log_prob(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(target | output) per row [B]."""

    @abstractmethod
    def ends(self, choice: torch.Tensor) -> torch.Tensor:
        """Bool [B]: the sequence ends with this choice (which is then not an output)."""

    def to_host(self, choice: torch.Tensor) -> torch.Tensor:
        """The choice as float [B, width], packed with other per-step values for one copy."""
        return choice.reshape(choice.shape[0], -1).float()

    @abstractmethod
    def item(self, row: np.ndarray) -> Any:
        """One step's output as JSON, from its `to_host` row [width]."""

    def config(self) -> dict[str, Any]:
        """What rebuilds this head (saved beside a model's config)."""
        return {"kind": self.kind}


class CategoricalHead(OutputHead):
    """Token ids: logits [B, V]; greedy, temperature / top-k / top-p sampling, beam search."""

    kind = "categorical"
    supports_beam = True
    width = 1

    def __init__(self, bos_id: int, eos_id: int):
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)

    def start(self, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch,), self.bos_id, dtype=torch.long, device=device)

    def choose(self, output, sampling, generator=None):
        return choose_next_tokens(output, sampling.temperature, sampling.top_k, sampling.top_p, generator, sampling)

    def log_probs(self, output: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of every token [B, V] (beam search expands these)."""
        return torch.log_softmax(output.float(), dim=-1)

    def log_prob(self, output, target):
        return self.log_probs(output).gather(1, target.long().unsqueeze(1)).squeeze(1)

    def ends(self, choice):
        return choice == self.eos_id

    def item(self, row):
        return int(row[0])

    def config(self):
        return {"kind": self.kind, "bos_id": self.bos_id, "eos_id": self.eos_id}


class BernoulliHead(OutputHead):
    """Multi-hot frames (e.g. one piano-roll step): logits [B, U], one independent unit each.

    Greedy switches on the units with p > 0.5; temperature > 0 samples every unit from its
    tempered sigmoid. With `end_unit`, a frame that switches it on ends the row.
    """

    kind = "bernoulli"

    def __init__(self, units: int, end_unit: int | None = None):
        assert units >= 1, f"a Bernoulli head needs at least one unit, got {units}"
        assert end_unit is None or 0 <= end_unit < units, f"end_unit {end_unit} outside 0..{units - 1}"
        self.units, self.end_unit, self.width = int(units), end_unit, int(units)

    def start(self, batch, device):
        return torch.zeros(batch, self.units, device=device)

    def choose(self, output, sampling, generator=None):
        logits = output.float()
        frame = (logits > 0).float()
        sampled = (sampling.temperature > 0).nonzero(as_tuple=True)[0]
        if sampled.numel():
            probs = torch.sigmoid(logits[sampled] / sampling.temperature[sampled].unsqueeze(1))  # [R, U]
            frame[sampled] = sampling.draw(sampled, lambda at, g: torch.bernoulli(probs[at], generator=g), generator)
        return frame, self.log_prob(logits, frame)

    def log_prob(self, output, target):
        # -BCE summed over units: the exact log-probability of the whole frame.
        return -F.binary_cross_entropy_with_logits(output.float(), target.float(), reduction="none").sum(-1)

    def ends(self, choice):
        if self.end_unit is None:
            return torch.zeros(choice.shape[0], dtype=torch.bool, device=choice.device)
        return choice[:, self.end_unit] > 0.5

    def item(self, row):
        return [int(i) for i in np.flatnonzero(row > 0.5)]

    def config(self):
        return {"kind": self.kind, "units": self.units, "end_unit": self.end_unit}


class GaussianHead(OutputHead):
    """Real vectors (forecasting): output [B, 2*D] = mean and log-variance per dimension.

    Greedy gives the mean; temperature t > 0 samples mean + t * std * noise. Rows end only at
    their maximum length.
    """

    kind = "gaussian"
    MIN_LOG_VAR, MAX_LOG_VAR = -12.0, 8.0  # keeps exp() finite for an untrained model

    def __init__(self, dim: int):
        assert dim >= 1, f"a Gaussian head needs at least one dimension, got {dim}"
        self.dim, self.width = int(dim), int(dim)

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, D] and clamped log-variance [B, D] of an output [B, 2D]."""
        assert output.shape[-1] == 2 * self.dim, f"expected output [B, {2 * self.dim}], got {tuple(output.shape)}"
        mean, log_var = output.float().split(self.dim, dim=-1)
        return mean, log_var.clamp(self.MIN_LOG_VAR, self.MAX_LOG_VAR)

    def start(self, batch, device):
        return torch.zeros(batch, self.dim, device=device)

    def choose(self, output, sampling, generator=None):
        mean, log_var = self.split(output)
        rows = torch.arange(mean.shape[0], device=mean.device)
        noise = sampling.draw(  # [B, D]
            rows, lambda at, g: torch.randn((len(at), self.dim), generator=g, device=mean.device), generator
        )
        scale = sampling.temperature.float().unsqueeze(1) * torch.exp(0.5 * log_var)
        value = mean + scale * noise  # temperature 0 rows get exactly the mean
        return value, self.log_prob(output, value)

    def log_prob(self, output, target):
        mean, log_var = self.split(output)
        squared = (target.float() - mean) ** 2 / torch.exp(log_var)
        return -0.5 * (squared + log_var + math.log(2 * math.pi)).sum(-1)

    def ends(self, choice):
        return torch.zeros(choice.shape[0], dtype=torch.bool, device=choice.device)

    def item(self, row):
        return [float(v) for v in row]

    def config(self):
        return {"kind": self.kind, "dim": self.dim}


HEADS: dict[str, type[OutputHead]] = {h.kind: h for h in (CategoricalHead, BernoulliHead, GaussianHead)}


def head_from_config(config: dict[str, Any]) -> OutputHead:
    """Rebuild a head from its `config()`."""
    options = dict(config)
    kind = options.pop("kind")
    assert kind in HEADS, f"unknown head kind {kind!r}; known: {sorted(HEADS)}"
    return HEADS[kind](**options)


# ----- categorical choice rules -----------------------------------------------------------------


def choose_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None = None,
    sampling: Sampling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row: argmax where temperature == 0, else sample from the tempered,
    top-k / top-p filtered distribution. Returns tokens [B] and their log-probabilities [B]
    under the model's unmodified distribution (so scores compare across strategies).
    `sampling`, when given, supplies the seeded rows' own generators."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    tokens = log_probs.argmax(dim=-1)
    sampled_rows = (temperature > 0).nonzero(as_tuple=True)[0]
    if sampled_rows.numel():
        scaled = logits[sampled_rows].float() / temperature[sampled_rows].unsqueeze(1)
        scaled = _filter_top_k(scaled, top_k[sampled_rows])
        scaled = _filter_top_p(scaled, top_p[sampled_rows])
        probs = torch.softmax(scaled, dim=-1)
        tokens = tokens.clone()
        if sampling is None:
            tokens[sampled_rows] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            draw = sampling.draw(sampled_rows, lambda at, g: torch.multinomial(probs[at], 1, generator=g), generator)
            tokens[sampled_rows] = draw.squeeze(1)
    return tokens, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)


def _filter_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    # top_k <= 0 means "no limit" for that row.
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # Keep the smallest set of tokens whose probability reaches top_p (always at least one).
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
