"""Floor: a no-op Ray Serve app behind Ray's HTTP proxy: what Ray itself costs on this machine.

`--hops 1`: the proxy hands each request to one replica that reads the body and answers at
once. `--hops 2`: the proxy hands it to an ingress replica, which forwards the body through a
deployment handle to a second replica that answers (mmserve's Ray topology: proxy -> ingress
-> task replica, with no model). A local Ray instance (dashboard off, access log off), like
`bench.peers.rayserve`; `max_ongoing_requests` above the highest client concurrency.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import ray
from ray import serve
from starlette.requests import Request

from bench.common import ENDPOINT

ANSWER = {"caption": "no-op"}


def build(hops: int, max_ongoing: int):
    options = {"num_replicas": 1, "max_ongoing_requests": max_ongoing, "ray_actor_options": {"num_cpus": 0}}

    @serve.deployment(**options)
    class NoOp:
        async def __call__(self, request: Request) -> dict:
            await request.body()
            return ANSWER

        async def answer(self, body: bytes) -> dict:
            return ANSWER

    if hops == 1:
        return NoOp.bind()

    @serve.deployment(**options)
    class Forward:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, request: Request) -> dict:
            return await self.inner.answer.remote(await request.body())

    return Forward.bind(NoOp.bind())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hops", type=int, choices=[1, 2], default=1)
    parser.add_argument("--max-ongoing", type=int, default=1000)
    args = parser.parse_args()

    def stop(*_):
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=quiet)
    serve.run(build(args.hops, args.max_ongoing), route_prefix=ENDPOINT, logging_config=quiet)
    print(f"no-op ray serve ({args.hops} hops) ready on {args.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
