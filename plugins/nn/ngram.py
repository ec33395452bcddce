"""A token n-gram language model for shallow fusion: log P(next token | recent tokens) for a
batch of decoder rows at once, added to a decoder's scores with a weight (Gulcehre et al. 2015;
Kannan et al. 2018 for attention speech recognisers).

Why an n-gram and not a neural LM: it is counted, not trained (seconds over millions of
tokens on a CPU), it is exact about what the text says (the spelling of every word it has
seen) and it never rules anything out, so the vocabulary stays open.

- Smoothing: interpolated Witten-Bell. P(c | h) = (C(h c) + U(h) P(c | h')) / (C(h) + U(h)),
  where U(h) is how many different tokens followed h and h' is h without its oldest token;
  below the empty context, a uniform distribution.
- `boundaries` (e.g. the space of a character model): a context never reaches back past the
  last boundary token (the boundary itself is kept, so "at a word start" is known). For text
  whose words are drawn independently this is the right model and stays small; for real text it
  is a word-internal model.
- Storage: two sorted int64 hash tables (contexts; context + next token) with their counts,
  in safetensors beside a JSON config; a context of up to `order - 1` tokens hashes exactly
  (token id + 1 in base `vocab_size + 1`, so no two contexts share a key).
- Decoding state: the last `order - 1` tokens of each row, left-padded with -1, as one
  batch-first tensor under `STATE_KEY`, so the engine reorders and concatenates it like any
  other decoder state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_KEY = "lm_context"
WEIGHTS_FILE, CONFIG_FILE = "lm.safetensors", "lm.json"


@dataclass(frozen=True)
class NGramConfig:
    order: int  # tokens per n-gram, the predicted one included
    vocab_size: int  # token ids are 0 .. vocab_size - 1
    boundaries: tuple[int, ...] = ()  # tokens a context never reaches back past (kept themselves)
    tokens_counted: int = 0

    def __post_init__(self) -> None:
        assert self.order >= 1, f"order must be >= 1, got {self.order}"
        # Keys of (context, next) must fit an int64: (vocab_size + 1) ** order < 2 ** 63.
        assert (self.vocab_size + 1) ** self.order < 2**62, f"order {self.order} too high for {self.vocab_size} tokens"

    @property
    def base(self) -> int:
        return self.vocab_size + 1


def _context_ids(sequence: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """For each position i, the index of the first token its context may use: the last
    boundary token before i (or 0)."""
    is_boundary = np.isin(sequence, boundaries) if boundaries else np.zeros(len(sequence), dtype=bool)
    last = np.where(is_boundary, np.arange(len(sequence)), 0)
    last = np.maximum.accumulate(last)  # last boundary at or before each position
    starts = np.zeros(len(sequence), dtype=np.int64)
    starts[1:] = last[:-1]
    return starts


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, counts = np.unique(keys, return_counts=True)
    return unique.astype(np.int64), counts.astype(np.int64)


class NGramLM:
    """Counts of an n-gram model and its batched scoring."""

    def __init__(self, config: NGramConfig, tables: dict[str, torch.Tensor]):
        self.config = config
        # contexts (sorted keys) with their total count and number of distinct followers;
        # events (sorted context * base + next + 1 keys) with their counts
        self.context_keys, self.context_totals, self.context_types = (
            tables["context_keys"], tables["context_totals"].double(), tables["context_types"].double())  # fmt: skip
        self.event_keys, self.event_counts = tables["event_keys"], tables["event_counts"].double()
        self._rows: torch.Tensor | None = None  # log-probabilities of every stored context (log_probs)

    # ----- counting -----------------------------------------------------------------------

    @classmethod
    def count(cls, sequences: Iterable[Sequence[int]], order: int, vocab_size: int,
              boundaries: Sequence[int] = ()) -> NGramLM:  # fmt: skip
        """Count every n-gram of every order up to `order` in token-id sequences (each one a
        whole utterance, start token first: what a decoder's `prev` tokens are)."""
        config = NGramConfig(order, vocab_size, tuple(boundaries))
        base = config.base
        event_keys, context_keys = [], []
        total = 0
        for chunk in _chunks(sequences, 20_000):
            # One long array; a context never crosses into the previous utterance, because
            # every utterance starts with its own start token, treated as a boundary here.
            lengths = np.array([len(s) for s in chunk])
            flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in chunk])
            assert flat.min() >= 0 and flat.max() < vocab_size, "token ids out of range"
            utterance_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
            starts = np.maximum(_context_ids(flat, boundaries), utterance_start)
            positions = np.arange(len(flat))
            predicted = positions > utterance_start  # the start token itself is never predicted
            total += int(predicted.sum())
            key = np.zeros(len(flat), dtype=np.int64)  # hash of the context of length k, per position
            for k in range(order):  # contexts of length k = 0 .. order - 1
                valid = predicted & (positions - k >= starts)
                if k > 0:
                    key = key + (flat[np.clip(positions - k, 0, None)] + 1) * base ** (k - 1)
                context_keys.append(key[valid])
                event_keys.append(key[valid] * base + flat[valid] + 1)
        events, event_counts = _unique_counts(np.concatenate(event_keys))
        contexts, context_totals = _unique_counts(np.concatenate(context_keys))
        # distinct followers of each context: events grouped by their context
        event_contexts = events // base
        context_types = np.bincount(np.searchsorted(contexts, event_contexts), minlength=len(contexts))
        tables = {
            "context_keys": torch.from_numpy(contexts),
            "context_totals": torch.from_numpy(context_totals),
            "context_types": torch.from_numpy(context_types.astype(np.int64)),
            "event_keys": torch.from_numpy(events),
            "event_counts": torch.from_numpy(event_counts),
        }
        return cls(NGramConfig(order, vocab_size, tuple(boundaries), total), tables)

    # ----- artifacts ----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # counts fit int32 (a corpus of under 2 ** 31 tokens): half the bytes on disk
        tables = {"context_keys": self.context_keys, "context_totals": self.context_totals.to(torch.int32),
                  "context_types": self.context_types.to(torch.int32), "event_keys": self.event_keys,
                  "event_counts": self.event_counts.to(torch.int32)}  # fmt: skip
        save_file({k: v.contiguous() for k, v in tables.items()}, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> NGramLM:
        directory = Path(directory)
        data = json.loads((directory / CONFIG_FILE).read_text())
        config = NGramConfig(int(data["order"]), int(data["vocab_size"]), tuple(data.get("boundaries", ())),
                             int(data.get("tokens_counted", 0)))  # fmt: skip
        tables = {k: v.to(torch.int64) for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
        return cls(config, tables)

    @staticmethod
    def exists(directory: Path) -> bool:
        return (Path(directory) / WEIGHTS_FILE).is_file() and (Path(directory) / CONFIG_FILE).is_file()

    # ----- decoding -----------------------------------------------------------------------

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The state of rows that have seen nothing yet (their first `advance` is the start token)."""
        return {STATE_KEY: torch.full((batch, max(self.config.order - 1, 1)), -1, dtype=torch.long, device=device)}

    def advance(self, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append tokens [B] to each row's context (a boundary token starts a new one)."""
        context = torch.cat([state[STATE_KEY][:, 1:], tokens.view(-1, 1).to(torch.long)], dim=1)
        if self.config.boundaries:
            reset = torch.isin(tokens, torch.tensor(self.config.boundaries, device=tokens.device))
            blank = torch.full_like(context, -1)
            blank[:, -1] = tokens
            context = torch.where(reset.view(-1, 1), blank, context)
        return {STATE_KEY: context}

    def log_probs(self, state: dict[str, torch.Tensor], tokens: torch.Tensor | None = None) -> torch.Tensor:
        """log P(token | context) (float64) for every row's context: of the tokens [B, K] given
        (a decoder's candidates), else of every token, [B, V].

        A context's distribution is that of its longest suffix the counts have seen (a longer,
        unseen one adds nothing to the interpolation), and the seen contexts are few (every
        one is stored), so each one's row over the vocabulary is computed once (`prepare`, or the
        first call): a decoding step is then one hash lookup and a gather."""
        context = state[STATE_KEY]
        batch, width = context.shape
        device = context.device
        longest = min(self.config.order - 1, width)
        keys, alive = self._suffix_keys(context, longest)  # [B, L + 1]
        found, index = _lookup(self.context_keys, keys)
        usable = alive & found
        # the longest usable suffix: the last True along dim 1 (the empty context always is,
        # unless nothing was counted at all)
        lengths = torch.arange(longest + 1, device=device).expand(batch, -1)
        best = torch.where(usable, lengths, -1).amax(dim=1)
        if bool((best < 0).any()):
            return self._interpolated(context, tokens)
        rows = self._table().index_select(0, index.gather(1, best.view(-1, 1)).squeeze(1))  # [B, V]
        return rows if tokens is None else rows.gather(1, tokens.to(torch.long))

    def prepare(self) -> NGramLM:
        """Build the table `log_probs` reads now (about a second for 30,000 contexts), not on the first request."""
        self._table()
        return self

    def _table(self) -> torch.Tensor:
        """log P(every token | context) [C, V] of every stored context (built once)."""
        if self._rows is None:
            contexts = self._stored_contexts()
            rows = [self._interpolated(chunk) for chunk in contexts.split(4096)]
            self._rows = torch.cat(rows) if rows else torch.empty(0, self.config.vocab_size, dtype=torch.float64)
        return self._rows

    def _stored_contexts(self) -> torch.Tensor:
        """The stored context keys decoded back into token rows [C, order - 1] (left-padded -1)."""
        width, base = max(self.config.order - 1, 1), self.config.base
        digits = torch.stack([(self.context_keys // base**j) % base for j in range(width)], dim=1)  # most recent first
        return (digits - 1).flip(1)  # digit 0 (no token) becomes -1

    def _suffix_keys(self, context: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of the contexts of length 0..longest (the last k tokens) [B, L + 1], and whether
        each is whole (no padding inside) [B, L + 1]."""
        batch, width = context.shape
        device = context.device
        recent = context[:, width - longest :].flip(1)  # [B, L]: the last token first
        alive = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), (recent >= 0).cummin(dim=1).values], 1)
        powers = self.config.base ** torch.arange(longest, device=device, dtype=torch.long)
        keys = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device),
                          ((recent.clamp_min(0) + 1) * powers).cumsum(dim=1)], dim=1)  # fmt: skip
        return keys, alive

    def _interpolated(self, context: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The Witten-Bell interpolation itself, every context length at once."""
        batch, width = context.shape
        base, device = self.config.base, context.device
        if tokens is None:
            tokens = torch.arange(self.config.vocab_size, device=device).expand(batch, -1)
        next_ids = tokens.to(torch.long) + 1  # [B, K]
        keys, alive = self._suffix_keys(context, min(self.config.order - 1, width))  # [B, L + 1]
        total, types = self._context_counts(keys)
        seen = alive & (total > 0)
        counts = self._event_counts(keys.unsqueeze(2) * base + next_ids.unsqueeze(1))  # [B, L + 1, K]
        # Witten-Bell: p_k = a_k + b_k p_(k-1) from the uniform p_(-1); an unseen context keeps
        # p_(k-1) (a = 0, b = 1). Unrolled: p_L = sum_k a_k prod_(j>k) b_j + p_(-1) prod_j b_j.
        norm = (total + types).clamp_min(1).unsqueeze(2)
        a = torch.where(seen.unsqueeze(2), counts / norm, 0.0)
        b = torch.where(seen, types / (total + types).clamp_min(1), 1.0).unsqueeze(2).expand_as(a)
        after = torch.cat([b[:, 1:].flip(1).cumprod(dim=1).flip(1), torch.ones_like(b[:, :1])], dim=1)  # prod_(j>k) b_j
        probs = (a * after).sum(dim=1) + b.prod(dim=1) / self.config.vocab_size
        return probs.log()

    def _context_counts(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found, index = _lookup(self.context_keys, keys)
        zero = torch.zeros((), dtype=torch.float64, device=keys.device)
        return (torch.where(found, self.context_totals[index], zero), torch.where(found, self.context_types[index], zero))

    def _event_counts(self, keys: torch.Tensor) -> torch.Tensor:
        found, index = _lookup(self.event_keys, keys)
        return torch.where(found, self.event_counts[index], torch.zeros((), dtype=torch.float64, device=keys.device))

    def to(self, device: torch.device | str) -> NGramLM:
        for name in ("context_keys", "context_totals", "context_types", "event_keys", "event_counts"):
            setattr(self, name, getattr(self, name).to(device))
        self._rows = None if self._rows is None else self._rows.to(device)
        return self

    @property
    def num_bytes(self) -> int:
        return 8 * (len(self.context_keys) + len(self.event_keys)) + 4 * (2 * len(self.context_keys) + len(self.event_keys))


def _lookup(table: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found, index) of each key in a sorted table (index clamped, valid only where found)."""
    if len(table) == 0:
        return torch.zeros_like(keys, dtype=torch.bool), torch.zeros_like(keys)
    index = torch.searchsorted(table, keys).clamp_max(len(table) - 1)
    return table[index] == keys, index


def _chunks(sequences: Iterable[Sequence[int]], size: int) -> Iterable[list[Sequence[int]]]:
    chunk: list[Sequence[int]] = []
    for sequence in sequences:
        chunk.append(sequence)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
