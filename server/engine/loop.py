"""The per-task engine: encoder micro-batching plus an iteration-level decode loop.

One worker thread owns the model. Requests wait in a bounded queue; when the decode loop is
idle the first arrival opens an encoder batch that closes at `max_batch_size` inputs or
`max_wait_ms` after that arrival. While sequences are decoding, waiting requests join at the
next step (their encoder outputs are padded and concatenated to the active memory) and
finished or cancelled sequences leave, so a short caption never waits for a long one.

Beam-search requests are decoded as their own batch between loop steps.

Following Ray Serve's batching: one future per request, an exception reaches every caller
whose input was in the failing batch, and a cancelled request is dropped, freeing its slot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State, concat_states, select_state
from mmserve.plugins.nn.search import DecodeResult, beam_search, choose_next_tokens
from mmserve.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class EngineOverloaded(RuntimeError):
    """The queue is full; the client should retry later (HTTP 503 + Retry-After)."""

    status_code = 503

    def __init__(self, task: str, queue_size: int, retry_after_s: int = 1):
        super().__init__(f"task {task!r} is overloaded: {queue_size} requests already queued; retry later")
        self.retry_after_s = retry_after_s


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""

    status_code = 503


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16  # inputs per encoder batch
    max_wait_ms: float = 5.0  # how long the first arrival waits for company
    max_active: int = 64  # sequences decoding at once
    max_queue: int = 256  # requests waiting beyond the active ones


@dataclass(frozen=True)
class DecodeParams:
    max_length: int = 32
    beam_size: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    length_penalty: float = 0.0  # GNMT alpha, beam search only
    keep_attention: bool = False


TokenCallback = Callable[[int], None]


class _Request:
    def __init__(self, inputs: Any, params: DecodeParams, loop: asyncio.AbstractEventLoop, on_token: TokenCallback | None):
        self.inputs = inputs
        self.params = params
        self.loop = loop
        self.future: asyncio.Future[DecodeResult] = loop.create_future()
        self.on_token = on_token
        self.cancelled = False
        self.arrived = time.monotonic()

    def cancel(self) -> None:
        # Read by the worker thread at its next step; a bool write is atomic under the GIL.
        self.cancelled = True

    def resolve(self, result: DecodeResult | BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result)

    def emit(self, token: int) -> None:
        if self.on_token is not None:
            self.loop.call_soon_threadsafe(self.on_token, token)


def _settle(future: asyncio.Future, result: DecodeResult | BaseException) -> None:
    if future.done():  # the caller gave up (cancelled or timed out)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


@dataclass
class _Row:
    request: _Request
    positions: int  # real memory length N of this row
    tokens: list[int] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)
    score: float = 0.0


@dataclass
class _ActiveBatch:
    rows: list[_Row] = field(default_factory=list)
    memory: Memory | None = None
    state: State | None = None
    prev: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    top_p: torch.Tensor | None = None

    def keep(self, index: list[int]) -> None:
        if len(index) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in index]
        if not self.rows:
            self.memory = self.state = self.prev = self.temperature = self.top_k = self.top_p = None
            return
        idx = torch.tensor(index, device=self.prev.device)
        self.memory = self.memory.select(idx)
        self.state = select_state(self.state, idx)
        self.prev, self.temperature = self.prev[idx], self.temperature[idx]
        self.top_k, self.top_p = self.top_k[idx], self.top_p[idx]


class TaskEngine:
    """Batches and decodes requests for one task's model on one device."""

    def __init__(
        self,
        task: str,
        model: EncoderDecoder,
        config: EngineConfig = EngineConfig(),
        metrics: ServerMetrics | None = None,
        device: torch.device | str = "cpu",
    ):
        assert config.max_batch_size >= 1 and config.max_active >= 1, f"bad engine config {config}"
        self.task = task
        self.model = model.eval()
        self.config = config
        self.metrics = metrics
        self.device = torch.device(device)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._active_count = 0

    # ----- caller side (event loop thread) -------------------------------------------------

    def start(self) -> TaskEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.task}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish those already accepted, and join the worker."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_sequences(self) -> int:
        return self._active_count

    async def generate(self, inputs: Any, params: DecodeParams, on_token: TokenCallback | None = None) -> DecodeResult:
        """Decode one preprocessed input; cancelling the awaiting task frees its slot."""
        request = self.submit(inputs, params, on_token)
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancel()
            raise

    def submit(self, inputs: Any, params: DecodeParams, on_token: TokenCallback | None = None) -> _Request:
        request = _Request(inputs, params, asyncio.get_running_loop(), on_token)
        with self._wakeup:
            if self._stopping:
                raise EngineStopped(f"task {self.task!r} is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                if self.metrics:
                    self.metrics.rejected.labels(self.task).inc()
                raise EngineOverloaded(self.task, len(self._waiting))
            self._waiting.append(request)
            self._wakeup.notify()
        self._observe_queue()
        return request

    # ----- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        active = _ActiveBatch()
        with torch.inference_mode():
            while True:
                admitted = self._admit(idle=not active.rows)
                if admitted is None:
                    break
                admitted = [r for r in admitted if not r.cancelled]
                flat = [r for r in admitted if r.params.beam_size == 1]
                beams = [r for r in admitted if r.params.beam_size > 1]
                if flat:
                    self._join(active, flat)
                if beams:
                    self._decode_beams(beams)
                if active.rows:
                    self._step(active)
                self._active_count = len(active.rows)
                if self.metrics:
                    self.metrics.active_sequences.labels(self.task).set(len(active.rows))
        for request in self._drain():
            request.resolve(EngineStopped(f"task {self.task!r} shut down before decoding this request"))

    def _admit(self, idle: bool) -> list[_Request] | None:
        """Requests to start now; None when the engine should exit."""
        free = self.config.max_active - (0 if idle else self._active_count)
        with self._wakeup:
            if idle:
                while not self._waiting and not self._stopping:
                    self._wakeup.wait()
                if self._stopping and not self._waiting:
                    return None
                # Hold the batch open for company, measured from the first arrival.
                deadline = self._waiting[0].arrived + self.config.max_wait_ms / 1000
                while len(self._waiting) < self.config.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.wait(remaining)
            take = min(free, self.config.max_batch_size, len(self._waiting))
            admitted = [self._waiting.popleft() for _ in range(take)]
        self._observe_queue()
        return admitted

    def _drain(self) -> list[_Request]:
        with self._wakeup:
            drained = list(self._waiting)
            self._waiting.clear()
        return drained

    def _observe_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.labels(self.task).set(len(self._waiting))

    def _encode(self, requests: list[_Request]) -> Memory:
        batch = self.model.collate([r.inputs for r in requests])
        batch = batch.to(self.device) if isinstance(batch, torch.Tensor) else batch
        if self.metrics:
            self.metrics.encode_batch.labels(self.task).observe(len(requests))
        return self.model.encode(batch)

    def _join(self, active: _ActiveBatch, requests: list[_Request]) -> None:
        try:
            memory = self._encode(requests)
            state = self.model.init_state(memory)
        except Exception as exc:
            log.exception("encoding a batch of %d for %s failed", len(requests), self.task)
            for r in requests:
                r.resolve(RuntimeError(f"model failed to encode the input: {exc}"))
            return
        lengths = memory.mask.sum(dim=1).tolist()
        rows = [_Row(r, int(n)) for r, n in zip(requests, lengths)]
        device = memory.values.device
        prev = torch.full((len(requests),), self.model.bos_id, dtype=torch.long, device=device)
        temperature = torch.tensor([r.params.temperature for r in requests], device=device)
        top_k = torch.tensor([r.params.top_k for r in requests], dtype=torch.long, device=device)
        top_p = torch.tensor([r.params.top_p for r in requests], device=device)
        if not active.rows:
            active.rows, active.memory, active.state = rows, memory, state
            active.prev, active.temperature, active.top_k, active.top_p = prev, temperature, top_k, top_p
            return
        active.rows += rows
        active.memory = Memory.concat([active.memory, memory])
        active.state = concat_states([active.state, state])
        active.prev = torch.cat([active.prev, prev])
        active.temperature = torch.cat([active.temperature, temperature])
        active.top_k = torch.cat([active.top_k, top_k])
        active.top_p = torch.cat([active.top_p, top_p])

    def _step(self, active: _ActiveBatch) -> None:
        active.keep([i for i, row in enumerate(active.rows) if not row.request.cancelled])
        if not active.rows:
            return
        if self.metrics:
            self.metrics.decode_batch.labels(self.task).observe(len(active.rows))
        try:
            logits, state, attention = self.model.step(active.prev, active.state, active.memory)
            tokens, log_probs = choose_next_tokens(logits, active.temperature, active.top_k, active.top_p)
        except Exception as exc:
            log.exception("decode step for %s failed", self.task)
            for row in active.rows:
                row.request.resolve(RuntimeError(f"model failed while decoding: {exc}"))
            active.keep([])
            return
        active.state, active.prev = state, tokens
        keep: list[int] = []
        emitted = 0
        for i, (row, token, log_prob) in enumerate(zip(active.rows, tokens.tolist(), log_probs.tolist())):
            row.score += log_prob
            if token == self.model.eos_id:
                self._finish(row, finished=True)
                continue
            row.tokens.append(token)
            emitted += 1
            if row.request.params.keep_attention:
                row.attention.append(attention[i, : row.positions].cpu())
            row.request.emit(token)
            if len(row.tokens) >= row.request.params.max_length:
                self._finish(row, finished=False)
                continue
            keep.append(i)
        if self.metrics and emitted:
            self.metrics.tokens.labels(self.task).inc(emitted)
        active.keep(keep)

    def _finish(self, row: _Row, finished: bool) -> None:
        attention = torch.stack(row.attention) if row.attention else None
        row.request.resolve(DecodeResult(row.tokens, row.score, attention, finished))

    def _decode_beams(self, requests: list[_Request]) -> None:
        # Requests with different beam sizes or limits are decoded in groups sharing both.
        groups: dict[tuple, list[_Request]] = collections.defaultdict(list)
        for r in requests:
            groups[(r.params.beam_size, r.params.max_length, r.params.length_penalty)].append(r)
        for (beam_size, max_length, alpha), group in groups.items():
            try:
                memory = self._encode(group)
                results = beam_search(self.model, memory, beam_size, max_length, alpha)
            except Exception as exc:
                log.exception("beam search for %s failed", self.task)
                for r in group:
                    r.resolve(RuntimeError(f"model failed during beam search: {exc}"))
                continue
            for r, result in zip(group, results):
                for token in result.tokens:
                    r.emit(token)
                r.resolve(result)
