"""Peer: LitServe with its batched loop (`LitAPI(max_batch_size=B, batch_timeout=T)`).

LitServe runs the HTTP server and the model in separate processes: the API server parses
the multipart form and queues it; the inference worker decodes each request (`decode_request`
= the task's preprocess), stacks up to B of them within T seconds (`batch`), runs one
static batch (encode + greedy decode, `predict`), and unbatches the captions.

Long-decode (`--workload long-decode`): the body is the forecast request's JSON (LitServe hands
`decode_request` the parsed object): the series is preprocessed and its `max_length` rides
along, so each row of the static batch stops at its own horizon, and the batch's answers go
out when its longest row ends.
"""

import argparse

import litserve as ls
from fastapi import Request

from bench.common import (
    CAPTIONING,
    ENDPOINT,
    FORECAST_ENDPOINT,
    LONG_DECODE,
    answer_key,
    caption_batch,
    load,
    max_length,
    preprocess,
    unpack_request,
)


class CaptionAPI(ls.LitAPI):
    def __init__(self, weights: str, workload: str = CAPTIONING, **kwargs):
        super().__init__(api_path=FORECAST_ENDPOINT if workload == LONG_DECODE else ENDPOINT, **kwargs)
        self.weights, self.workload = weights, workload

    def setup(self, device: str) -> None:
        self.task, self.model = load(self.weights, self.workload)
        self.length = max_length(self.workload)

    def decode_request(self, request: Request):
        if self.workload == LONG_DECODE:  # the parsed JSON body: (series, its own horizon)
            series, horizon = unpack_request(request)
            return preprocess(self.task, self.model, series, self.workload), horizon
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        return preprocess(self.task, self.model, data, self.workload)

    def batch(self, inputs):
        return inputs  # a list of tensors (long-decode: of (tensor, horizon)); `caption_batch` stacks them

    def predict(self, inputs):
        single = not isinstance(inputs, list)  # max_batch_size == 1 hands a single input
        inputs = [inputs] if single else inputs
        lengths = None
        if self.workload == LONG_DECODE:
            inputs, lengths = [x for x, _ in inputs], [n for _, n in inputs]
        answers = caption_batch(self.task, self.model, inputs, self.length, self.workload, lengths)
        return answers[0] if single else answers

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output) -> dict:
        return {answer_key(self.workload): output}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--workload", choices=[CAPTIONING, LONG_DECODE], default=CAPTIONING)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport")
    args = parser.parse_args()
    api = CaptionAPI(args.weights, args.workload, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=300,
                          fast_queue=args.fast_queue)  # fmt: skip
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
