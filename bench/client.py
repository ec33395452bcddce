"""Load generator: a separate process that drives one server at each concurrency level.

Closed loop: `c` workers each send a request, wait for the whole answer, and send the next,
until the level's bounded request count is spent. Request i carries input i mod N of the
fixed input set, as a pre-built body (captioning: multipart `file`, image/png; long-decode: the
JSON request body as written, series + its own `max_length`), so the client spends as little
CPU per request as it can (it shares the machine with the server).

HTTP: async httpx by default, each worker owning a one-connection keep-alive client (one
shared pool of c connections costs O(c) of httpcore bookkeeping per request, which at c=64
made the load generator the bottleneck). `--http aiohttp` uses one aiohttp session instead,
which spends about a quarter of httpx's CPU per request. A short untimed warm-up at the same concurrency precedes
each level. Latency is send-to-last-byte; throughput is completed requests over the wall
time from the first send to the last answer.

    python -m bench.client --url http://127.0.0.1:8000/v1/captioning --inputs DIR \
        --levels 1,8 --requests 64,256 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.common import (
    CONTENT_TYPE,
    JSON_TYPE,
    LONG_DECODE,
    answer_text,
    inputs_workload,
    machine_busy_cpu_s,
    read_inputs,
    session_cpu_s,
    wait_for_quiet,
)

BOUNDARY = "mmserve-bench-7d3f2a"
HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON_HEADERS = {"content-type": JSON_TYPE}


def multipart_body(data: bytes, content_type: str = CONTENT_TYPE) -> bytes:
    name = "input.txt" if content_type.startswith("text/") else "scene.png"
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def request_body(data: bytes, workload: str) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one request: a multipart upload of the PNG, or the long-decode JSON
    request body as it is."""
    if workload == LONG_DECODE:
        return data, JSON_HEADERS
    return multipart_body(data), HEADERS


def parse_caption(body: bytes) -> str:
    """The answer string from a JSON answer: `caption` (captioning), else `forecast` (a JSON
    array string, see bench.common.answer_text); for a streamed answer (LitServe's continuous
    batching loop), the last non-empty line holds it. A no-op server's answer is a caption too."""
    lines = [line for line in body.splitlines() if line.strip()]
    assert lines, "empty response body"
    payload = json.loads(lines[-1])
    if isinstance(payload, str):  # a streamed answer may be a JSON string holding the JSON object
        payload = json.loads(payload)
    return payload["caption"] if "caption" in payload else answer_text(payload["forecast"])


Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True)
class Quiet:
    """The machine is shared: before a level, wait (up to max_wait_s) until processes outside
    the benchmark use under `threshold` cores; measure a level again (up to `retries` times)
    when they used more than that meanwhile."""

    threshold: float = 0.25
    max_wait_s: float = 120.0
    retries: int = 2


async def open_transport(
    http: str, url: str, concurrency: int, timeout_s: float, headers: dict[str, str] = HEADERS
) -> tuple[list[Post], Callable[[], Awaitable[None]]]:
    """One `post(body) -> (status, content)` per worker, and a function closing them all."""
    if http == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

        async def post_aiohttp(body: bytes) -> tuple[int, bytes]:
            async with session.post(url, data=body, headers=headers) as response:
                return response.status, await response.read()

        return [post_aiohttp] * concurrency, session.close
    assert http == "httpx", f"--http must be httpx or aiohttp, got {http!r}"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) for _ in range(concurrency)]

    def bind(client: httpx.AsyncClient) -> Post:
        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            response = await client.post(url, content=body, headers=headers)
            return response.status_code, response.content

        return post_httpx

    async def close() -> None:
        await asyncio.gather(*(c.aclose() for c in clients))

    return [bind(c) for c in clients], close


async def run_level(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    count: int,
    label: str,
    warmup: int,
    server_sid: int | None = None,
    timeout_s: float = 300.0,
    http: str = "httpx",
    quiet: Quiet | None = None,
    headers: dict[str, str] = HEADERS,
) -> dict[str, Any]:
    quiet = quiet or Quiet()
    latencies: list[float] = []
    captions: dict[int, str] = {}
    errors: list[str] = []
    next_index = 0
    bar = tqdm(total=count, desc=f"{label:<18} c={concurrency:<3}", unit="req", leave=False, file=sys.stderr,
               mininterval=0.25, dynamic_ncols=True)  # fmt: skip

    async def one(post: Post, i: int, timed: bool) -> None:
        body = bodies[i % len(bodies)]
        start = time.perf_counter()
        try:
            status, content = await post(body)
            elapsed = time.perf_counter() - start
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {content[:200].decode(errors='replace')}")
            caption = parse_caption(content)
        except Exception as exc:  # counted, reported, never retried
            if timed:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                bar.update(1)
            return
        if timed:
            latencies.append(elapsed)
            captions.setdefault(i % len(bodies), caption)
            bar.update(1)

    async def worker(post: Post, limit: int, timed: bool) -> None:
        nonlocal next_index
        while next_index < limit:
            i = next_index
            next_index += 1
            await one(post, i, timed)

    def own_cpu_s() -> float:  # the server with everything it started, and this client
        return session_cpu_s(server_sid) + time.process_time()

    clients, close = await open_transport(http, url, concurrency, timeout_s, headers)
    attempts = 0
    try:
        # Warm-up: untimed, same concurrency, so connections exist and caches are hot.
        next_index = 0
        await asyncio.gather(*(worker(c, warmup, False) for c in clients))
        while True:
            attempts += 1
            wait_for_quiet(own_cpu_s, quiet.threshold, quiet.max_wait_s, lambda m: tqdm.write(m, file=sys.stderr))
            latencies.clear()
            captions.clear()
            errors.clear()
            bar.reset(total=count)
            next_index = 0
            server_cpu, client_cpu, busy_cpu = session_cpu_s(server_sid), time.process_time(), machine_busy_cpu_s()
            started = time.perf_counter()
            await asyncio.gather(*(worker(c, count, True) for c in clients))
            wall = time.perf_counter() - started
            server_cpu, client_cpu = session_cpu_s(server_sid) - server_cpu, time.process_time() - client_cpu
            busy_cpu = machine_busy_cpu_s() - busy_cpu
            other = (busy_cpu - server_cpu - client_cpu) / wall
            if other < quiet.threshold or attempts > quiet.retries:
                break
            tqdm.write(f"  {label:<18} c={concurrency:<3} other processes used {other:.2f} cores meanwhile: "
                       "measuring again", file=sys.stderr)  # fmt: skip
    finally:
        await close()
    bar.close()
    return {
        "concurrency": concurrency,
        "requests": count,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": wall,
        "throughput": len(latencies) / wall if wall > 0 else 0.0,
        "server_cpu_s": server_cpu,  # CPU of the server and everything it started, timed part only
        "client_cpu_s": client_cpu,  # this process, progress bar included
        "machine_cpu_s": busy_cpu,  # every process on the machine: shows load from outside the bench
        "attempts": attempts,
        "latencies_s": latencies,
        "captions": {str(k): v for k, v in sorted(captions.items())},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = inputs_workload(args.inputs)
    requests = [request_body(data, workload) for data in read_inputs(args.inputs)]
    assert requests, f"no scene_*.png or request_*.json inputs in {args.inputs}"
    bodies, headers = [body for body, _ in requests], requests[0][1]
    levels = [int(v) for v in args.levels.split(",")]
    counts = [int(v) for v in args.requests.split(",")]
    if len(counts) == 1:
        counts *= len(levels)
    assert len(counts) == len(levels), "--requests needs one count, or one per level"
    results = []
    for concurrency, count in zip(levels, counts):
        warmup = max(2 * concurrency, args.min_warmup)
        level = await run_level(
            args.url, bodies, concurrency, count, args.label, warmup, args.server_sid, args.timeout, args.http,
            Quiet(args.quiet_threshold, args.quiet_wait_s, args.retries), headers,
        )
        results.append(level)
        level = results[-1]
        tqdm.write(
            f"  {args.label:<18} c={concurrency:<3} {level['throughput']:8.1f} req/s  "
            f"ok {level['ok']}/{count}" + (f"  ERRORS {level['errors']}: {level['error_samples'][:1]}" if level["errors"] else ""),
            file=sys.stderr,
        )
    return {"label": args.label, "url": args.url, "http": args.http, "inputs": len(bodies), "levels": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--inputs", required=True, help="directory of scene_*.png or request_*.json")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrency levels")
    parser.add_argument("--requests", default="256", help="timed requests per level (one, or one per level)")
    parser.add_argument("--min-warmup", type=int, default=8, help="untimed requests before each level, at least")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    parser.add_argument("--label", default="server")
    parser.add_argument("--http", choices=["httpx", "aiohttp"], default="httpx", help="client HTTP library")
    parser.add_argument("--server-sid", type=int, help="session (= pid) of the server, to report its CPU time")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="cores others may use (see Quiet)")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0, help="longest wait for a quiet machine")
    parser.add_argument("--retries", type=int, default=2, help="re-measurements of a level disturbed by others")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the client's own CPU cost comes off the server's share of the machine

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
