"""Cold start, throughput and latency of the Ray Serve backend against the embedded server.

For each backend it starts a real `mmserve serve` process (Ray: a fresh local cluster) on a
free port with a fresh data directory, and measures:

- cold start: process spawn until every benchmarked task is ready and has answered once;
- per task and concurrency level: a closed loop of `--requests` requests (after a short
  untimed warm-up), throughput = requests / wall time, p50 / p99 of send-to-last-byte latency.

Tasks: `echo` (the example plugin, text in) always; `captioning` when its bundled weights exist
(plugins/captioning/weights/config.json). Client and servers share this machine's cores.

    .venv/bin/python -m bench.ray_vs_embedded --requests 200 --levels 1,16 --out ray_vs_embedded.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
ECHO_SRC = REPO / "examples" / "mmserve-echo" / "src"
CAPTIONING_WEIGHTS = REPO / "plugins" / "captioning" / "weights"
ECHO_TEXT = b"the quick brown fox jumps over the lazy dog"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def captioning_available() -> bool:
    return (CAPTIONING_WEIGHTS / "config.json").is_file()


def request_for(task: str) -> tuple[bytes, dict[str, str]]:
    if task == "echo":
        return ECHO_TEXT, {"content-type": "text/plain"}
    from PIL import Image  # a fixed, deterministic 64x64 test card

    image = Image.new("RGB", (64, 64))
    image.putdata([((x * 4) % 256, (y * 4) % 256, 128) for y in range(64) for x in range(64)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), {"content-type": "image/png"}


def server_settings(data_dir: Path, tasks: list[str], ray_cpus: int) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "plugins": ["captioning"] if "captioning" in tasks else ["none"],
        "plugin_modules": ["mmserve_echo.plugin"],
        "ray": {"num_cpus": ray_cpus},
    }


def start_server(backend: str, workdir: Path, tasks: list[str], ray_cpus: int) -> tuple[subprocess.Popen, str, Path]:
    config = workdir / "mmserve.yaml"
    config.write_text(yaml.safe_dump(server_settings(workdir / "data", tasks, ray_cpus)))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(ECHO_SRC)])}
    env.pop("RAY_ADDRESS", None)  # always a fresh local cluster: cold start includes starting Ray
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "mmserve.server", "--log-level", "warning", "--config", str(config), "serve",
               "--backend", backend, "--port", str(port)]
    with open(log_path, "wb") as log:
        # Its own session, so that stopping it can never signal this process.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, f"http://127.0.0.1:{port}", log_path


def wait_ready(base: str, tasks: list[str], process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(tasks)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready in {timeout_s}s:\n{log_path.read_text()[-4000:]}")
        try:
            status = {t["name"]: t["status"] for t in httpx.get(f"{base}/v1/tasks", timeout=5).json()["tasks"]}
            for task in list(pending):
                if status.get(task) == "ready":
                    body, headers = request_for(task)
                    if httpx.post(f"{base}/v1/{task}", content=body, headers=headers, timeout=30).status_code == 200:
                        pending.discard(task)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this script created for it
            process.wait()


async def closed_loop(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, requests: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            response = await client.post(url, content=body, headers=headers)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        warm = remaining
        remaining = min(2 * concurrency, 16)
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        latencies.clear()
        errors, remaining = 0, warm
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": len(ordered) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)],
    }


def bench_backend(backend: str, tasks: list[str], levels: list[int], requests: int, ray_cpus: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"mmserve-bench-{backend}-") as tmp:
        started = time.perf_counter()
        process, base, log_path = start_server(backend, Path(tmp), tasks, ray_cpus)
        try:
            wait_ready(base, tasks, process, log_path, timeout_s=300)
            cold_start = time.perf_counter() - started
            print(f"{backend}: cold start {cold_start:.1f} s", file=sys.stderr)
            runs = []
            for task in tasks:
                body, headers = request_for(task)
                for level in levels:
                    run = asyncio.run(closed_loop(f"{base}/v1/{task}", body, headers, level, requests))
                    run["task"] = task
                    runs.append(run)
                    print(f"{backend}: {task} c={level} {run['throughput_rps']:.1f} req/s "
                          f"p50 {run['p50_ms']:.1f} ms p99 {run['p99_ms']:.1f} ms errors {run['errors']}",
                          file=sys.stderr)
        finally:
            stop_server(process)
    return {"backend": backend, "cold_start_s": cold_start, "runs": runs}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| backend | cold start s | task | concurrency | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for run in result["runs"]:
            lines.append(
                f"| {result['backend']} | {result['cold_start_s']:.1f} | {run['task']} | {run['concurrency']} | "
                f"{run['throughput_rps']:.1f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | {run['errors']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per task and level")
    parser.add_argument("--levels", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--backends", default="embedded,ray")
    parser.add_argument("--tasks", help="comma-separated; default: echo, plus captioning if its weights exist")
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",") if args.tasks else ["echo"] + (["captioning"] if captioning_available() else [])
    levels = [int(level) for level in args.levels.split(",")]
    results = [bench_backend(b, tasks, levels, args.requests, args.ray_cpus) for b in args.backends.split(",")]
    if args.out:
        args.out.write_text(json.dumps({"machine_cpus": os.cpu_count(), "results": results}, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
