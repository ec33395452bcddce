"""Peer: Ray Serve, one replica with `@serve.batch` around a static-batch greedy decode.

The replica's `__call__` reads the multipart upload and preprocesses it (the task's own
function), then awaits the batched method; `@serve.batch(max_batch_size, batch_wait_timeout_s)`
collects concurrent calls into one list, which is encoded and greedy-decoded as one static
batch in a worker thread (so the replica keeps accepting requests while a batch decodes).
`max_ongoing_requests` is raised above the highest client concurrency (Ray's default of 5
would cap every batch at 5). A local Ray instance is started with the dashboard off, and
Serve's access log off (as for every peer).
"""

import argparse
import asyncio
import signal
import sys
import time

import ray
from ray import serve
from starlette.requests import Request

from bench.common import ENDPOINT, caption_batch, load, max_length, preprocess


def build(weights: str, max_batch_size: int, batch_wait_s: float, max_ongoing: int):
    @serve.deployment(num_replicas=1, max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": 0})
    class Captioner:
        def __init__(self) -> None:
            self.task, self.model = load(weights)
            self.length = max_length()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def caption(self, inputs: list) -> list[str]:
            return await asyncio.to_thread(caption_batch, self.task, self.model, inputs, self.length)

        async def __call__(self, request: Request) -> dict:
            form = await request.form()
            data = await form["file"].read()
            return {"caption": await self.caption(preprocess(self.task, self.model, data))}

    return Captioner.bind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--max-ongoing", type=int, default=256)
    args = parser.parse_args()

    def stop(*_):
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=quiet)
    app = build(args.weights, args.max_batch_size, args.batch_wait_s, args.max_ongoing)
    serve.run(app, route_prefix=ENDPOINT, logging_config=quiet)
    print(f"ray serve ready on {args.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
