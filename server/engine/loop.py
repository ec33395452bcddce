"""The per-task engine: an encoder thread feeding an iteration-level decode loop.

Two worker threads own the model, so the decode loop never waits on a convolution:
- the **encoder** takes waiting requests in micro-batches that close at `max_batch_size`
  inputs, at `max_batch_cost` (a task's cost per input, e.g. audio or video frames, so one long
  clip does not pad many short ones), or `max_wait_ms` after the first arrival when nothing is
  decoding; it encodes them and hands memory plus initial state to the decoder;
- the **decoder** steps one `DecodingBatch` (plugins/nn/decoding.py) per memory-length bucket. Encoded requests join
  between steps, finished and cancelled ones leave, and beam-search requests are K rows of
  the same batch, so no request stalls another.

Following Ray Serve's batching: one future per request, an exception reaches every caller
whose input was in the failing batch, and a cancelled request is dropped, freeing its slot.
Results and streamed outputs reach the event loop once per step, not once per row.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mmserve.plugins.errors import InputError
from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State, to_device
from mmserve.plugins.nn.decoding import DecodeParams, DecodeResult, LengthBuckets, Sequence, StepEvents
from mmserve.plugins.nn.heads import OutputHead
from mmserve.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

TokenCallback = Callable[[Any], None]

__all__ = [
    "DecodeParams", "EngineConfig", "EngineOverloaded", "EngineStopped", "ModelFailed", "TaskEngine", "TokenCallback",
]


class EngineOverloaded(RuntimeError):
    """The queue is full; the client should retry later (HTTP 503 + Retry-After)."""

    status_code = 503

    def __init__(self, task: str, queue_size: int, retry_after_s: int = 1):
        super().__init__(f"task {task!r} is overloaded: {queue_size} requests already queued; retry later")
        self.retry_after_s = retry_after_s


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""

    status_code = 503


class ModelFailed(RuntimeError):
    """The model raised on this request's input (HTTP 500); other requests are unaffected."""

    status_code = 500


class UnsupportedDecoding(ValueError):
    """The request asks for a decoding the task's output head cannot do (HTTP 422)."""

    status_code = 422


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16  # inputs per encoder batch
    max_batch_cost: int = 0  # summed input cost per encoder batch (0: no limit)
    max_wait_ms: float = 5.0  # how long the first arrival waits for company
    max_active: int = 64  # sequences decoding at once
    max_queue: int = 256  # requests waiting beyond the active ones
    length_buckets: bool = True  # decode memories of very different lengths in separate batches


class _Request:
    def __init__(self, inputs: Any, params: DecodeParams, cost: int, loop: asyncio.AbstractEventLoop, on_token):
        self.inputs, self.params, self.cost = inputs, params, cost
        self.loop = loop
        self.future: asyncio.Future[DecodeResult] = loop.create_future()
        self.on_token: TokenCallback | None = on_token
        self.cancelled = False
        self.arrived = time.monotonic()


@dataclass
class _Encoded:
    requests: list[_Request]
    memory: Memory
    state: State


class TaskEngine:
    """Batches and decodes requests for one task's model on one device."""

    def __init__(
        self,
        task: str,
        model: EncoderDecoder,
        config: EngineConfig = EngineConfig(),
        metrics: ServerMetrics | None = None,
        device: torch.device | str = "cpu",
        input_cost: Callable[[Any], int] | None = None,
    ):
        assert config.max_batch_size >= 1 and config.max_active >= 1, f"bad engine config {config}"
        assert isinstance(getattr(model, "head", None), OutputHead), (
            f"{type(model).__name__} has no output head: set self.head (see mmserve.plugins.nn.heads)"
        )
        self.task = task
        self.model = model.eval()
        self.config = config
        self.metrics = metrics
        self.device = torch.device(device)
        self.input_cost = input_cost or (lambda inputs: 1)
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._ready: list[_Encoded] = []
        self._cancelled: list[_Request] = []
        self._pending = 0  # requests taken by the encoder and not yet joined
        self._admitted = 0  # requests admitted (preprocessing) and not yet submitted
        self._encoded_total = 0
        self._active = 0  # sequences in the decode batch
        self._stopping = False
        self._encoder_done = False
        self._threads: list[threading.Thread] = []

    # ----- caller side (event loop thread) -------------------------------------------------

    def start(self) -> TaskEngine:
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._encode_loop, name=f"encode-{self.task}", daemon=True),
                threading.Thread(target=self._decode_loop, name=f"decode-{self.task}", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish those already accepted, and join the workers."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_sequences(self) -> int:
        return self._active

    @property
    def encoded_requests(self) -> int:
        """Requests encoded so far; each joins the decode batch at the step after its encoding."""
        return self._encoded_total

    def check(self, params: DecodeParams) -> None:
        """Refuse decoding the model's head cannot do, before any work is queued."""
        if params.beam_size > 1 and not self.model.head.supports_beam:
            raise UnsupportedDecoding(
                f"task {self.task!r} produces {self.model.head.kind} outputs, which beam search cannot "
                "decode; use beam_size=1 (greedy or sampling)"
            )

    async def generate(
        self, inputs: Any, params: DecodeParams, on_token: TokenCallback | None = None, admitted: bool = False
    ) -> DecodeResult:
        """Decode one preprocessed input; cancelling the awaiting task frees its slot."""
        return await self.result(self.submit(inputs, params, on_token, admitted))

    async def result(self, request: _Request) -> DecodeResult:
        """The submitted request's result; cancelling the awaiting task frees its slot."""
        try:
            return await request.future
        except asyncio.CancelledError:
            self.cancel(request)
            raise

    def admit(self) -> None:
        """Count one request that is on its way to `submit` (still preprocessing) against the
        queue, so excess load is shed before any work is spent on it and the preprocessing
        backlog is bounded too. Pair with `submit(..., admitted=True)` or `withdraw()`."""
        with self._cv:
            if self._stopping:
                raise EngineStopped(f"task {self.task!r} is shutting down")
            queued = len(self._waiting) + self._admitted
            if queued >= self.config.max_queue:
                if self.metrics:
                    self.metrics.rejected.labels(self.task).inc()
                raise EngineOverloaded(self.task, queued)
            self._admitted += 1

    def check_capacity(self) -> None:
        """Raise EngineOverloaded when `admit` would; reserves nothing (an early, cheap shed)."""
        queued = len(self._waiting) + self._admitted  # a racy read is fine: admit() decides
        if queued >= self.config.max_queue:
            if self.metrics:
                self.metrics.rejected.labels(self.task).inc()
            raise EngineOverloaded(self.task, queued)

    def withdraw(self) -> None:
        """An admitted request that will not be submitted (its input failed, its client left)."""
        with self._cv:
            self._admitted -= 1
            assert self._admitted >= 0, "withdraw() without admit()"

    def submit(
        self, inputs: Any, params: DecodeParams, on_token: TokenCallback | None = None, admitted: bool = False
    ) -> _Request:
        """Queue one input. An `admitted` request already holds its place in the queue."""
        try:
            self.check(params)
            request = _Request(inputs, params, max(1, int(self.input_cost(inputs))), asyncio.get_running_loop(),
                               on_token)  # fmt: skip
        except BaseException:
            if admitted:
                self.withdraw()
            raise
        with self._cv:
            if admitted:
                self._admitted -= 1
            if self._stopping:
                raise EngineStopped(f"task {self.task!r} is shutting down")
            if not admitted and len(self._waiting) + self._admitted >= self.config.max_queue:
                if self.metrics:
                    self.metrics.rejected.labels(self.task).inc()
                raise EngineOverloaded(self.task, len(self._waiting))
            self._waiting.append(request)
            self._cv.notify_all()
        self._observe_queue()
        return request

    def cancel(self, request: _Request) -> None:
        with self._cv:
            request.cancelled = True
            self._cancelled.append(request)

    # ----- encoder thread -----------------------------------------------------------------

    def _encode_loop(self) -> None:
        with torch.inference_mode():
            while True:
                batch = self._next_encoder_batch()
                if batch is None:
                    break
                if batch:
                    self._encode(batch)
        with self._cv:
            self._encoder_done = True
            self._cv.notify_all()

    def _next_encoder_batch(self) -> list[_Request] | None:
        """The next micro-batch to encode; None when the engine is stopping and drained."""
        config = self.config
        with self._cv:
            while True:
                free = config.max_active - self._active - self._pending
                if self._waiting and free > 0:
                    break
                if self._stopping and not self._waiting:
                    return None
                self._cv.wait()
            if self._active == 0 and self._pending == 0:
                # Nothing is decoding: hold the batch open for company, from the first arrival.
                deadline = self._waiting[0].arrived + config.max_wait_ms / 1000
                while not self._stopping and not self._batch_is_full():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
            batch: list[_Request] = []
            cost = 0
            limit = min(config.max_batch_size, config.max_active - self._active - self._pending)
            while self._waiting and len(batch) < limit:
                head = self._waiting[0]
                if batch and config.max_batch_cost and cost + head.cost > config.max_batch_cost:
                    break  # close the batch: this input would pad every shorter one in it
                batch.append(self._waiting.popleft())
                cost += head.cost
            batch = [r for r in batch if not r.cancelled]
            self._pending += len(batch)
        self._observe_queue()
        return batch

    def _batch_is_full(self) -> bool:
        config = self.config
        if len(self._waiting) >= config.max_batch_size:
            return True
        return bool(config.max_batch_cost) and sum(r.cost for r in self._waiting) >= config.max_batch_cost

    def _encode(self, requests: list[_Request]) -> None:
        try:
            memory, state = self._encode_batch(requests)
        except Exception as exc:
            if len(requests) > 1:
                # One bad input must not fail its batch-mates: encode each alone, so only the
                # input(s) the model raises on get an error.
                log.warning("encoding a batch of %d for %s failed (%s); encoding them one by one",
                            len(requests), self.task, exc)  # fmt: skip
                for request in requests:
                    self._encode([request])
                return
            log.exception("encoding an input for %s failed", self.task)
            with self._cv:
                self._pending -= len(requests)
                self._cv.notify_all()
            # A plugin that validates inside the model (InputError) still answers its 4xx.
            error = exc if isinstance(exc, InputError) else ModelFailed(
                f"model failed to encode the input: {type(exc).__name__}: {exc}")
            _deliver_all([(r, error) for r in requests])
            return
        if self.metrics:
            self.metrics.encode_batch.labels(self.task).observe(len(requests))
        with self._cv:
            self._ready.append(_Encoded(requests, memory, state))
            self._encoded_total += len(requests)
            self._cv.notify_all()

    def _encode_batch(self, requests: list[_Request]) -> tuple[Memory, State]:
        batch = to_device(self.model.collate([r.inputs for r in requests]), self.device)
        memory = self.model.encode(batch)
        return memory, self.model.init_state(memory)

    # ----- decoder thread -----------------------------------------------------------------

    def _decode_loop(self) -> None:
        batch = LengthBuckets(self.model, self.device, self.config.length_buckets)
        live: dict[int, Sequence] = {}  # id(request) -> its sequence
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._ready and not batch.live_sequences and not self._encoder_done:
                        self._cv.wait()
                    if not self._ready and not batch.live_sequences and self._encoder_done:
                        break
                    ready, self._ready = self._ready, []
                    cancelled, self._cancelled = self._cancelled, []
                    self._pending -= sum(len(e.requests) for e in ready)
                for request in cancelled:
                    sequence = live.pop(id(request), None)
                    if sequence is not None:
                        batch.drop(sequence)
                for encoded in ready:
                    self._join(batch, encoded, live)
                if batch.live_sequences:
                    self._step(batch, live)
                self._set_active(batch.live_sequences)
        for request in self._drain():
            _deliver_all([(request, EngineStopped(f"task {self.task!r} shut down before decoding this request"))])

    def _set_active(self, count: int) -> None:
        if count != self._active:
            with self._cv:
                self._active = count
                self._cv.notify_all()
        if self.metrics:
            self.metrics.active_sequences.labels(self.task).set(count)

    def _join(self, batch: LengthBuckets, encoded: _Encoded, live: dict[int, Sequence]) -> None:
        keep = [i for i, r in enumerate(encoded.requests) if not r.cancelled]
        if not keep:
            return
        memory, state = encoded.memory, encoded.state
        if len(keep) < len(encoded.requests):
            index = torch.tensor(keep, device=memory.values.device)
            memory = memory.select(index)
            state = {k: v.index_select(0, index) for k, v in state.items()}
        requests = [encoded.requests[i] for i in keep]
        lengths = memory.mask.sum(dim=1).tolist()
        sequences = [
            Sequence(r.params, int(n), tag=r, streams=r.on_token is not None) for r, n in zip(requests, lengths)
        ]
        batch.add(memory, state, sequences)
        for request, sequence in zip(requests, sequences):
            live[id(request)] = sequence

    def _step(self, batch: LengthBuckets, live: dict[int, Sequence]) -> None:
        if self.metrics:
            self.metrics.decode_batch.labels(self.task).observe(batch.live_rows)
        try:
            events: StepEvents = batch.step()  # a step the model fails on is retried row by row
        except Exception as exc:  # not the model's: fail what is decoding rather than hang it
            log.exception("decode step for %s failed", self.task)
            failed = batch.fail_all()
            for sequence in failed:
                live.pop(id(sequence.tag), None)
            _deliver_all([(s.tag, ModelFailed(f"model failed while decoding: {type(exc).__name__}: {exc}")) for s in failed])
            return
        outcomes: list[tuple[_Request, Any]] = [(seq.tag, ("item", item)) for seq, item in events.items]
        for sequence, error in events.failed:
            log.error("decoding one input for %s failed: %s: %s", self.task, type(error).__name__, error)
            live.pop(id(sequence.tag), None)
            if not isinstance(error, InputError):  # a plugin's own input error keeps its 4xx
                error = ModelFailed(f"model failed while decoding: {type(error).__name__}: {error}")
            outcomes.append((sequence.tag, error))
        for sequence, result in events.finished:
            live.pop(id(sequence.tag), None)
            if sequence.width > 1 and sequence.tag.on_token is not None:  # beams stream at the end
                outcomes += [(sequence.tag, ("item", item)) for item in result.tokens]
            outcomes.append((sequence.tag, result))
        if self.metrics and events.emitted:
            self.metrics.tokens.labels(self.task).inc(events.emitted)
        _deliver_all(outcomes)

    def _drain(self) -> list[_Request]:
        with self._cv:
            drained = list(self._waiting)
            self._waiting.clear()
        return drained

    def _observe_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.labels(self.task).set(len(self._waiting))


def _deliver_all(outcomes: list[tuple[_Request, Any]]) -> None:
    """Hand one step's outcomes to their event loops: one callback per loop, not per row."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any]]] = collections.defaultdict(list)
    for request, outcome in outcomes:
        by_loop[request.loop].append((request, outcome))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            pass


def _settle_all(items: list[tuple[_Request, Any]]) -> None:
    for request, outcome in items:
        if isinstance(outcome, tuple):  # ("item", one streamed output)
            if request.on_token is not None and not request.future.done():
                request.on_token(outcome[1])
            continue
        if request.future.done():  # the caller gave up (cancelled or timed out)
            continue
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)
