"""Peer: LitServe's `ContinuousBatchingLoop` (iteration-level batching, like mmserve's engine).

LitServe drives the loop; this LitAPI supplies its hooks. `add_request` (called by the loop's
prefill task for each arriving request) preprocesses the PNG and queues it. `step` (called
by the loop in a worker thread, once per decoder step) encodes every queued input as one
micro-batch, joins them to the active rows (padding memory and concatenating decoder state
with the same shared helpers mmserve uses), runs one decoder step for all rows, and returns
one `Output` per row. A finished row sends its caption, then `FINISH_STREAMING`.

The loop requires `stream=True`, and it sleeps 10 ms whenever `step` returns no output, so
every active row emits a small `{"token": ...}` line each step (LitServe's intended
token-streaming use). `--emit final` sends only the caption instead (fewer messages, but the
loop then sleeps on every step where no sequence finishes); `make bench` uses the faster one.
The client reads the caption from the last line of the streamed body.

Long-decode (`--workload long-decode`): a request is the forecast JSON body (series + its own
`max_length`); each row leaves at its own horizon. The Gaussian head's greedy choice is its
mean (`head.choose` at temperature 0, which also gives the step's log-probability for the
answer's score), and each step streams one `{"token": value}` line per row.
"""

import argparse
import threading

import litserve as ls
import torch
from fastapi import Request
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus

from bench.common import (
    CAPTIONING,
    ENDPOINT,
    FORECAST_ENDPOINT,
    LONG_DECODE,
    answer_key,
    load,
    max_length,
    preprocess,
    unpack_request,
)
from mmserve.plugins.nn.contract import Memory, concat_states, select_state
from mmserve.plugins.nn.heads import CategoricalHead, Sampling
from mmserve.plugins.nn.search import DecodeResult


class CaptionCBAPI(ls.LitAPI):
    def __init__(self, weights: str, max_active: int, emit_tokens: bool, workload: str = CAPTIONING):
        path = FORECAST_ENDPOINT if workload == LONG_DECODE else ENDPOINT
        super().__init__(api_path=path, stream=True, max_batch_size=max_active, loop=ContinuousBatchingLoop())
        self.weights, self.max_active, self.emit_tokens, self.workload = weights, max_active, emit_tokens, workload

    def setup(self, device: str) -> None:
        self.task, self.model = load(self.weights, self.workload)
        self.length = max_length(self.workload)
        self.key = answer_key(self.workload)
        self.head = self.model.head
        self.lock = threading.Lock()  # add_request (event loop thread) vs step (worker thread)
        self.pending: list[tuple[str, torch.Tensor, int]] = []  # (uid, input, its max_length)
        self.uids: list[str] = []
        self.tokens: list[list] = []
        self.limits: list[int] = []
        self.scores: list[float] = []
        self.memory = self.state = self.prev = None

    def decode_request(self, request: Request):
        if self.workload == LONG_DECODE:
            return request  # the parsed JSON body; add_request unpacks it
        upload = request["file"]
        return upload.file.read() if hasattr(upload, "file") else upload

    # ----- hooks the ContinuousBatchingLoop calls ------------------------------------------

    def add_request(self, uid: str, request) -> None:
        data, limit = self.decode_request(request), self.length
        if self.workload == LONG_DECODE:
            data, limit = unpack_request(data)
        inputs = preprocess(self.task, self.model, data, self.workload)
        with self.lock:
            self.pending.append((uid, inputs, limit))

    def has_capacity(self) -> bool:
        return len(self.uids) + len(self.pending) < self.max_active

    def has_active_requests(self) -> bool:
        return bool(self.uids or self.pending)

    @torch.inference_mode()
    def step(self, prev_outputs) -> list[Output]:
        with self.lock:
            new, self.pending = self.pending, []
        if new:
            self._join(new)
        if not self.uids:
            return []
        output, self.state, _ = self.model.step(self.prev, self.state, self.memory)
        if isinstance(self.head, CategoricalHead):  # captioning: argmax, ends at <eos>
            chosen = output.argmax(dim=-1)
            items = chosen.tolist()
            ended = [token == self.head.eos_id for token in items]
            log_probs = [0.0] * len(items)  # the caption's answer has no score
        else:  # forecast: the mean (temperature 0) and its log-probability; no end, only the horizon
            chosen, log_prob = self.head.choose(output, Sampling.greedy(len(self.uids), output.device))
            items = [self.head.item(row) for row in self.head.to_host(chosen).numpy()]
            ended = self.head.ends(chosen).tolist()
            log_probs = log_prob.tolist()
        outputs: list[Output] = []
        keep: list[int] = []
        for i, item in enumerate(items):
            uid, tokens = self.uids[i], self.tokens[i]
            if not ended[i]:
                tokens.append(item)
                self.scores[i] += log_probs[i]
            if ended[i] or len(tokens) >= self.limits[i]:
                result = DecodeResult(tokens, self.scores[i], finished=bool(ended[i]))
                answer = self.task.postprocess(result, self.model, False)[self.key]
                outputs.append(Output(uid, {self.key: answer}, LitAPIStatus.OK))
                outputs.append(Output(uid, "", LitAPIStatus.FINISH_STREAMING))
                continue
            if self.emit_tokens:
                outputs.append(Output(uid, {"token": self.task.token_text(item, self.model)}, LitAPIStatus.OK))
            keep.append(i)
        self._keep(keep, chosen)
        return outputs

    def encode_response(self, output):
        return output

    # ----- batch bookkeeping ------------------------------------------------------------

    def _join(self, new: list[tuple[str, torch.Tensor, int]]) -> None:
        memory = self.model.encode(self.model.collate([x for _, x, _ in new]))
        state = self.model.init_state(memory)
        prev = self.head.start(len(new), memory.values.device)  # <bos> ids, or zeros for a Gaussian head
        if self.uids:
            memory = Memory.concat([self.memory, memory])
            state = concat_states([self.state, state])
            prev = torch.cat([self.prev, prev])
        self.memory, self.state, self.prev = memory, state, prev
        self.uids += [uid for uid, _, _ in new]
        self.tokens += [[] for _ in new]
        self.limits += [limit for _, _, limit in new]
        self.scores += [0.0 for _ in new]

    def _keep(self, keep: list[int], chosen: torch.Tensor) -> None:
        if len(keep) == len(self.uids):
            self.prev = chosen
            return
        self.uids = [self.uids[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]
        self.limits = [self.limits[i] for i in keep]
        self.scores = [self.scores[i] for i in keep]
        if not keep:
            self.memory = self.state = self.prev = None
            return
        index = torch.tensor(keep)
        self.memory, self.state, self.prev = self.memory.select(index), select_state(self.state, index), chosen[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--workload", choices=[CAPTIONING, LONG_DECODE], default=CAPTIONING)
    parser.add_argument("--max-active", type=int, default=64)
    parser.add_argument("--emit", choices=["tokens", "final"], default="tokens")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport")
    args = parser.parse_args()
    api = CaptionCBAPI(args.weights, args.max_active, args.emit == "tokens", args.workload)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=300,
                          fast_queue=args.fast_queue)  # fmt: skip
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
