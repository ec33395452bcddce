"""The one decode loop: a batch of sequences stepped together, for every head and strategy.

`DecodingBatch` holds the device side (memory, decoder state, previous outputs, sampling
parameters) and the host side (outputs so far, scores, lengths) of every live row. The engine
drives it one step at a time while requests join and leave; `search.py` drives it to the end
for offline decoding. Both therefore decode identically.

- Greedy and sampled sequences are one row each; a beam-search sequence is `beam_size` rows
  whose order is re-drawn every step. All of them share each `model.step` call.
- Per step there is one device-to-host copy: log-probabilities, end flags, the chosen outputs,
  the beam rows' log-probabilities and any attention a caller asked for travel packed together.
- A finished row is only marked dead: its slot is dropped when that pays (many dead slots, or
  at the next join, which has to rebuild the batch anyway), not by re-gathering every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State, concat_states, select_state
from mmserve.plugins.nn.heads import CategoricalHead, Sampling

COMPACT_WHEN_DEAD = 0.25  # fraction of dead slots above which a step compacts the batch first


@dataclass(frozen=True)
class DecodeParams:
    max_length: int = 32
    beam_size: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    length_penalty: float = 0.0  # GNMT alpha, beam search only
    keep_attention: bool = False
    seed: int | None = None  # sampled rows draw from their own generator: same seed, same output


@dataclass
class DecodeResult:
    """One decoded sequence: one item per step (token ids for a categorical head, the head's
    JSON item otherwise; no <bos>/<eos>), the total log-probability, and the attention
    weights [T, N] over the real memory positions that produced each output."""

    tokens: list[Any]
    score: float
    attention: torch.Tensor | None = None
    finished: bool = True  # False when max_length cut it off before it ended


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation ((5 + |Y|) / 6) ** alpha; alpha 0 disables it."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Sequence:
    """One request being decoded: one row, or `params.beam_size` rows for beam search."""

    params: DecodeParams
    positions: int  # real memory length N
    tag: Any = None  # the caller's handle (the engine's request)
    streams: bool = False  # report each output as it is chosen (greedy / sampled rows only)
    slot: int = 0  # first row of the sequence in the batch
    done: bool = False
    # beam search only
    beam_scores: np.ndarray | None = None  # [K]
    hypotheses: list[tuple[float, float, list[Any], list[np.ndarray]]] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.params.beam_size


class ModelStepError(RuntimeError):
    """The model (or its head) raised during a step; the batch is as it was before the step."""

    def __init__(self, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class StepEvents:
    """What one step produced: outputs to stream, and sequences that finished."""

    items: list[tuple[Sequence, Any]] = field(default_factory=list)
    finished: list[tuple[Sequence, DecodeResult]] = field(default_factory=list)
    emitted: int = 0  # outputs chosen this step, over all rows
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)  # the model raised on them

    def extend(self, other: StepEvents) -> None:
        self.items += other.items
        self.finished += other.finished
        self.emitted += other.emitted
        self.failed += other.failed


class DecodingBatch:
    """Rows of many sequences decoded together; see the module docstring."""

    def __init__(self, model: EncoderDecoder, device: torch.device | str):
        self.model, self.head, self.device = model, model.head, torch.device(device)
        self.sequences: list[Sequence] = []
        self.memory: Memory | None = None
        self.state: State | None = None
        self.prev: torch.Tensor | None = None
        self.sampling: Sampling | None = None
        self.alive = np.zeros(0, dtype=bool)  # [S]
        self.lengths = np.zeros(0, dtype=np.int64)  # outputs so far per row
        self.scores = np.zeros(0, dtype=np.float64)  # summed log-probabilities per row (flat rows)
        self.history = np.zeros((0, 1, self.head.width), dtype=np.float32)  # [S, cap, K] outputs
        self.attention: list[list[np.ndarray] | None] = []  # per row, when its sequence keeps it
        self.owner: list[Sequence] = []  # per row: the sequence it belongs to
        self.single = np.zeros(0, dtype=bool)  # per row: greedy / sampled (not a beam row)
        self.streaming = np.zeros(0, dtype=bool)  # per row: report each output
        self.max_length = np.zeros(0, dtype=np.int64)  # per row

    # ----- membership ---------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.alive)

    @property
    def live_sequences(self) -> int:
        return sum(not s.done for s in self.sequences)

    def add(self, memory: Memory, state: State, sequences: list[Sequence]) -> None:
        """Join encoded sequences (memory and state hold one row per sequence)."""
        assert memory.batch_size == len(sequences), f"{memory.batch_size} memory rows for {len(sequences)} sequences"
        for seq in sequences:
            assert seq.width == 1 or self.head.supports_beam, f"{self.head.kind} outputs cannot be beam-searched"
        widths = torch.tensor([s.width for s in sequences], device=memory.values.device)
        if bool((widths > 1).any()):  # a beam sequence takes K identical rows
            rows = torch.repeat_interleave(torch.arange(len(sequences), device=widths.device), widths)
            memory, state = memory.select(rows), select_state(state, rows)
        self.compact()
        flat_params = [s.params for s in sequences for _ in range(s.width)]
        sampling = Sampling.build(
            [p.temperature if p.beam_size == 1 else 0.0 for p in flat_params],
            [p.top_k for p in flat_params],
            [p.top_p for p in flat_params],
            memory.values.device,
            [p.seed if p.beam_size == 1 else None for p in flat_params],
        )
        prev = self.head.start(len(flat_params), memory.values.device)
        slot = self.rows
        for seq in sequences:
            seq.slot, slot = slot, slot + seq.width
            if seq.width > 1:
                seq.beam_scores = np.full(seq.width, -np.inf)
                seq.beam_scores[0] = 0.0  # all beams start identical: expand only the first
        new = len(flat_params)
        longest = max(p.max_length for p in flat_params)
        self._grow_history(longest)
        history = np.zeros((new, self.history.shape[1], self.head.width), dtype=np.float32)
        attention = [[] if p.keep_attention else None for p in flat_params]
        if self.rows == 0:
            self.memory, self.state, self.prev, self.sampling = memory, state, prev, sampling
            self.history, self.attention = history, attention
        else:
            self.memory = Memory.concat([self.memory, memory])
            self.state = concat_states([self.state, state])
            self.prev = torch.cat([self.prev, prev])
            self.sampling = Sampling.concat([self.sampling, sampling])
            self.history = np.concatenate([self.history, history])
            self.attention += attention
        self.sequences += sequences
        self.owner += [s for s in sequences for _ in range(s.width)]
        self.single = np.concatenate([self.single, [p.beam_size == 1 for p in flat_params]]).astype(bool)
        self.streaming = np.concatenate(
            [self.streaming, [s.streams and s.width == 1 for s in sequences for _ in range(s.width)]]
        ).astype(bool)
        self.max_length = np.concatenate([self.max_length, [p.max_length for p in flat_params]]).astype(np.int64)
        self.alive = np.concatenate([self.alive, np.ones(new, dtype=bool)])
        self.lengths = np.concatenate([self.lengths, np.zeros(new, dtype=np.int64)])
        self.scores = np.concatenate([self.scores, np.zeros(new)])

    def drop(self, sequence: Sequence) -> None:
        """Stop decoding `sequence` (cancelled); its rows become dead slots."""
        sequence.done = True
        self.alive[sequence.slot : sequence.slot + sequence.width] = False

    def compact(self, force: bool = True) -> None:
        """Remove dead slots (always when `force`, else only when enough of them are dead)."""
        dead = self.rows - int(self.alive.sum())
        if dead == 0 or (not force and dead <= COMPACT_WHEN_DEAD * self.rows):
            return
        self.sequences = [s for s in self.sequences if not s.done]
        if not self.sequences:
            self._clear()
            return
        keep = np.flatnonzero(self.alive)
        index = torch.from_numpy(keep).to(self.prev.device)
        self.memory = self.memory.select(index).trim()
        self.state = select_state(self.state, index)
        self.prev, self.sampling = self.prev[index], self.sampling.select(index)
        self.history, self.lengths, self.scores = self.history[keep], self.lengths[keep], self.scores[keep]
        self.attention = [self.attention[i] for i in keep]
        self.owner = [self.owner[i] for i in keep]
        self.single, self.streaming, self.max_length = self.single[keep], self.streaming[keep], self.max_length[keep]
        self.alive = self.alive[keep]
        slot = 0
        for seq in self.sequences:
            seq.slot, slot = slot, slot + seq.width

    def split(self) -> list[DecodingBatch]:
        """One batch per live sequence, each holding exactly that sequence's rows and progress
        (after a failed step, to find which sequence the model fails on). This batch is left empty."""
        self.compact(force=True)
        parts = []
        for seq in self.sequences:
            rows = np.arange(seq.slot, seq.slot + seq.width)
            index = torch.from_numpy(rows).to(self.prev.device)
            part = DecodingBatch(self.model, self.device)
            part.sequences, part.memory = [seq], self.memory.select(index).trim()
            part.state, part.prev, part.sampling = select_state(self.state, index), self.prev[index], self.sampling.select(index)
            part.alive, part.lengths, part.scores = self.alive[rows], self.lengths[rows], self.scores[rows]
            part.history, part.attention = self.history[rows], [self.attention[r] for r in rows]
            part.owner = [self.owner[r] for r in rows]
            part.single, part.streaming, part.max_length = self.single[rows], self.streaming[rows], self.max_length[rows]
            seq.slot = 0
            parts.append(part)
        self._clear()
        return parts

    def _clear(self) -> None:
        self.sequences, self.memory, self.state, self.prev, self.sampling = [], None, None, None, None
        self.alive, self.lengths = np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        self.scores, self.attention, self.owner = np.zeros(0), [], []
        self.single, self.streaming = np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
        self.max_length = np.zeros(0, dtype=np.int64)
        self.history = np.zeros((0, self.history.shape[1], self.head.width), dtype=np.float32)

    def _grow_history(self, length: int) -> None:
        if length > self.history.shape[1]:
            grown = np.zeros((self.rows, length, self.head.width), dtype=np.float32)
            grown[:, : self.history.shape[1]] = self.history
            self.history = grown

    # ----- one step -----------------------------------------------------------------------

    def step(self, generator: torch.Generator | None = None) -> StepEvents:
        """Advance every live row by one output; report streamed outputs and finished sequences."""
        events = StepEvents()
        self.compact(force=False)
        if not self.sequences:
            return events
        beams = [s for s in self.sequences if s.width > 1 and not s.done]
        attend = [i for i, a in enumerate(self.attention) if a is not None and self.alive[i]]
        rows, width = self.rows, self.head.width
        beam_index = [s.slot + b for s in beams for b in range(s.width)]
        try:  # the model's part of the step: nothing of the batch changes until it is through
            output, state, attention = self.model.step(self.prev, self.state, self.memory)
            choice, log_prob = self.head.choose(output, self.sampling, generator)
            pieces = [log_prob.float(), self.head.ends(choice).float(), self.head.to_host(choice).reshape(-1)]
            if beam_index:
                assert isinstance(self.head, CategoricalHead)
                beam_rows = torch.tensor(beam_index, device=output.device)
                pieces.append(self.head.log_probs(output.index_select(0, beam_rows)).reshape(-1))
            if attend:
                pieces.append(attention.index_select(0, torch.tensor(attend, device=output.device)).float().reshape(-1))
            host = torch.cat(pieces).cpu().numpy()  # the step's one device-to-host copy
        except Exception as error:
            raise ModelStepError(error) from error
        log_prob_h, ended_h = host[:rows], host[rows : 2 * rows] > 0.5
        choice_h = host[2 * rows : 2 * rows + rows * width].reshape(rows, width)
        offset = 2 * rows + rows * width
        beam_log_probs = None
        if beam_index:
            vocab = output.shape[-1]
            beam_log_probs = host[offset : offset + len(beam_index) * vocab].reshape(len(beam_index), vocab)
            offset += len(beam_index) * vocab
        if attend:
            positions = attention.shape[1]
            for j, row in enumerate(attend):
                self.attention[row].append(host[offset + j * positions : offset + (j + 1) * positions])
        self.state, self.prev = state, choice
        self._advance_flat(events, log_prob_h, ended_h, choice_h)
        if beams:
            self._advance_beams(events, beams, beam_log_probs)
        return events

    def _advance_flat(self, events: StepEvents, log_prob, ended, choice) -> None:
        flat = self.alive & self.single
        self.scores[flat] += log_prob[flat]
        emitted = flat & ~ended
        slots = np.flatnonzero(emitted)
        self.history[slots, self.lengths[slots]] = choice[slots]
        self.lengths[slots] += 1
        events.emitted += len(slots)
        for slot in np.flatnonzero(emitted & self.streaming):
            events.items.append((self.owner[slot], self.head.item(choice[slot])))
        for slot in np.flatnonzero((flat & ended) | (emitted & (self.lengths >= self.max_length))):
            seq = self.owner[slot]
            rows = self.attention[slot]
            attention = self._attention_tensor(None if rows is None else rows[: self.lengths[slot]], seq)
            result = DecodeResult(self._items(slot), float(self.scores[slot]), attention, bool(ended[slot]))
            self._finish(events, seq, result)

    def _items(self, slot: int, length: int | None = None) -> list[Any]:
        length = self.lengths[slot] if length is None else length
        return [self.head.item(row) for row in self.history[slot, :length]]

    @staticmethod
    def _attention_tensor(rows: list[np.ndarray] | None, seq: Sequence) -> torch.Tensor | None:
        if rows is None:
            return None
        kept = [r[: seq.positions] for r in rows]
        return torch.from_numpy(np.stack(kept)) if kept else torch.zeros(0, seq.positions)

    def _finish(self, events: StepEvents, seq: Sequence, result: DecodeResult) -> None:
        seq.done = True
        self.alive[seq.slot : seq.slot + seq.width] = False
        events.finished.append((seq, result))

    def _advance_beams(self, events: StepEvents, beams: list[Sequence], log_probs: np.ndarray) -> None:
        """Re-draw each beam sequence's K rows from its best 2K continuations (GNMT scoring)."""
        parents = np.arange(self.rows)
        tokens: dict[int, int] = {}  # row -> its new token, for every row that continues
        start = 0
        for seq in beams:
            k, t = seq.width, int(self.lengths[seq.slot])
            block = log_probs[start : start + k]  # [K, V]
            start += k
            vocab = block.shape[1]
            candidates = (seq.beam_scores[:, None] + block).reshape(-1)
            alive, next_scores = 0, np.full(k, -np.inf)
            for cand in np.argsort(-candidates, kind="stable")[: 2 * k]:
                score = float(candidates[cand])
                if score == -np.inf:
                    break
                beam, token = divmod(int(cand), vocab)
                parent = seq.slot + beam
                if token == self.head.eos_id:
                    normalised = score / length_penalty(t + 1, seq.params.length_penalty)
                    attention = self.attention[parent]
                    seq.hypotheses.append(
                        (normalised, score, self._items(parent, t), None if attention is None else attention[:t])
                    )
                else:
                    parents[seq.slot + alive], tokens[seq.slot + alive] = parent, token
                    next_scores[alive] = score
                    alive += 1
                if alive == k or len(seq.hypotheses) >= k:
                    break
            seq.beam_scores = next_scores
            if len(seq.hypotheses) >= k or alive == 0:
                self._finish_beam(events, seq)
        self._reorder(parents, tokens)
        events.emitted += len(tokens)
        for seq in beams:
            if not seq.done and self.lengths[seq.slot] >= seq.params.max_length:
                self._finish_beam(events, seq)

    def _reorder(self, parents: np.ndarray, tokens: dict[int, int]) -> None:
        """Give each continuing beam row its parent's history, attention and state, then its token."""
        if not tokens:
            return
        moved = np.fromiter(tokens, dtype=np.int64)
        self.history[moved] = self.history[parents[moved]]
        self.lengths[moved] = self.lengths[parents[moved]]
        inherited = {int(r): self.attention[parents[r]] for r in moved}
        for row, rows in inherited.items():
            self.attention[row] = None if rows is None else list(rows)
        self.state = select_state(self.state, torch.from_numpy(parents).to(self.prev.device))
        self.prev = self.prev.clone()
        self.prev[torch.from_numpy(moved).to(self.prev.device)] = torch.tensor(
            [tokens[int(r)] for r in moved], device=self.prev.device, dtype=self.prev.dtype
        )
        self.history[moved, self.lengths[moved]] = np.array([tokens[int(r)] for r in moved], dtype=np.float32)[:, None]
        self.lengths[moved] += 1

    def _finish_beam(self, events: StepEvents, seq: Sequence) -> None:
        if seq.hypotheses:  # the best ended hypothesis by length-normalised score
            _, raw, items, attention = max(seq.hypotheses, key=lambda h: h[0])
            ended = True
        else:  # cut off by max_length: the best live hypothesis
            best = int(np.argmax(seq.beam_scores))
            slot = seq.slot + best
            raw, items, attention, ended = float(seq.beam_scores[best]), self._items(slot), self.attention[slot], False
        self._finish(events, seq, DecodeResult(items, raw, self._attention_tensor(attention, seq), ended))


class LengthBuckets:
    """Live sequences in one `DecodingBatch` per memory-length bucket (powers of two).

    A batch pads every row's memory to its longest row, so attention costs each row the
    longest memory present. With inputs of very different lengths (audio, video, text) one
    long input would tax every short row that joins while it decodes; bucketing bounds that
    padding to under 2x. Inputs of one length (an image grid) all share one bucket.
    """

    def __init__(self, model: EncoderDecoder, device: torch.device | str, enabled: bool = True):
        self.model, self.device, self.enabled = model, device, enabled
        # bucket -> its batch; ("isolated", id(sequence)) -> a sequence split off after a failed step
        self.batches: dict[Any, DecodingBatch] = {}
        self._bucket_of: dict[int, Any] = {}  # id(sequence) -> its key in `batches`

    @property
    def live_sequences(self) -> int:
        return sum(b.live_sequences for b in self.batches.values())

    @property
    def live_rows(self) -> int:
        return sum(int(b.alive.sum()) for b in self.batches.values())

    def bucket(self, positions: int) -> int:
        return 1 << max(0, positions - 1).bit_length() if self.enabled else 0

    def add(self, memory: Memory, state: State, sequences: list[Sequence]) -> None:
        groups: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            groups.setdefault(self.bucket(seq.positions), []).append(i)
        for bucket, rows in groups.items():
            part_memory, part_state = memory, state
            if len(rows) < len(sequences):
                index = torch.tensor(rows, device=memory.values.device)
                part_memory, part_state = memory.select(index).trim(), select_state(state, index)
            batch = self.batches.setdefault(bucket, DecodingBatch(self.model, self.device))
            batch.add(part_memory, part_state, [sequences[i] for i in rows])
            for i in rows:
                self._bucket_of[id(sequences[i])] = bucket

    def drop(self, sequence: Sequence) -> None:
        bucket = self._bucket_of.pop(id(sequence), None)
        if bucket is not None and not sequence.done:
            self.batches[bucket].drop(sequence)

    def step(self, generator: torch.Generator | None = None) -> StepEvents:
        """One step of every batch that has live rows; their events together.

        When the model raises on a batch's step (`ModelStepError`), that batch is split into one batch per
        sequence and each is stepped alone: the sequences the model still fails on are
        reported in `events.failed` and dropped; the others go on, in their own batches until
        they end, having lost nothing (a failed step changes no row)."""
        events = StepEvents()
        for key, batch in list(self.batches.items()):
            if not batch.live_sequences:
                if isinstance(key, tuple):  # an isolated sequence's batch, done
                    del self.batches[key]
                continue
            try:
                events.extend(batch.step(generator))
            except ModelStepError as error:
                if batch.live_sequences == 1:
                    events.failed += self._fail(batch, key, error.cause)
                else:
                    self._isolate(key, batch, events, generator)
        for seq, _ in events.finished:
            self._bucket_of.pop(id(seq), None)
        return events

    def _isolate(self, key: Any, batch: DecodingBatch, events: StepEvents, generator: torch.Generator | None) -> None:
        del self.batches[key]
        for part in batch.split():
            seq = part.sequences[0]
            alone = ("isolated", id(seq))
            self.batches[alone] = part
            self._bucket_of[id(seq)] = alone
            try:
                events.extend(part.step(generator))
            except ModelStepError as error:
                events.failed += self._fail(part, alone, error.cause)

    def _fail(self, batch: DecodingBatch, key: Any, error: Exception) -> list[tuple[Sequence, Exception]]:
        """The model raised on this batch's step with one sequence in it: drop it."""
        seq = next(s for s in batch.sequences if not s.done)
        batch.drop(seq)
        self._bucket_of.pop(id(seq), None)
        if isinstance(key, tuple):
            del self.batches[key]
        return [(seq, error)]

    def fail_all(self) -> list[Sequence]:
        """Drop every live sequence (after an unexpected failure); returns them."""
        failed = [s for b in self.batches.values() for s in b.sequences if not s.done]
        for seq in failed:
            self.drop(seq)
        return failed
