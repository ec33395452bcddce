"""`make bench`: every system, same weights, same machine, one run.

For each system in turn: start its server as a subprocess (own session) on a free
127.0.0.1 port, wait until a real captioning request succeeds, drive it with the client
process at each concurrency level, stop everything in that session. The bare model runs first,
in its own process, with nothing else of ours running. Then write bench/results/latest.md,
latest.png and latest.json, and print the summary as the very last line.

Environment:
  BENCH_QUICK=1          reduced run (fewer requests per level), under 5 minutes
  BENCH_WEIGHTS=DIR      captioning artifact directory (default plugins/captioning/weights)
  BENCH_SYSTEMS=a,b      only these systems (names as in the table; bare model always runs)
  BENCH_LEVELS=1,8,32,64 concurrency levels (32 is needed for the summary)
  BENCH_REQUESTS=N[,..]  timed requests per level, overriding the defaults below
  BENCH_OUT=DIR          results directory (default bench/results)
  BENCH_QUIET=0.25       before each level, wait until processes outside the benchmark use under this
                         many cores, and measure a level again when they used more meanwhile
                         (BENCH_QUIET_WAIT seconds of waiting at most: 120, quick 5; retries 2, quick 0)
  BENCH_HTTP=aiohttp     client HTTP library: aiohttp (default; ~0.4 ms CPU per request) or httpx
                         (~1.3 ms): the client shares the machine's cores with the server
  MMSERVE_*              passed through to the mmserve server (override its engine knobs)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.client import HEADERS, multipart_body
from bench.common import (
    DEFAULT_WEIGHTS,
    ENDPOINT,
    REPO,
    free_port,
    max_length,
    read_inputs,
    session_pids,
    write_inputs,
)

PY = sys.executable
INPUT_COUNT = 64
LEVELS = (1, 8, 32, 64)
# Timed requests per level: (full, quick). c=1 is slow and its tail settles with fewer.
REQUESTS = {"full": {1: 256, 8: 1024, 32: 2048, 64: 2048}, "quick": {1: 64, 8: 192, 32: 384, 64: 384}}
MAX_BATCH = 64  # every batching system may batch up to the highest concurrency
BATCH_WAIT_S = 0.005  # LitServe's wait for a fuller batch: its best (1 ms gave 253 vs 380 req/s at c=32)
# Ray Serve's batch wait: 0.005 s gave 117 req/s at c=32, 0.02 s 163, 0.05 s 180 but adds 50 ms
# to every request at low concurrency; 0.02 s is its best compromise.
RAY_BATCH_WAIT_S = 0.02
# Per-system torch threads, from a sweep at c=32 on the 2-core machine: one intra-op thread
# helped LitServe's batched loop (355-380 -> 425-442 req/s) and plain FastAPI (111 -> 151),
# made no difference to Ray Serve, and hurt the bare model (821 -> 568) and LitServe's
# continuous batching (188 -> 173); each gets its better setting. mmserve sets its own
# (`torch_threads`, default 1).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@dataclass
class System:
    name: str
    argv: list[str]
    config: str
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0


def _setting_default(name: str) -> Any:
    from mmserve.server.settings import Settings

    return Settings.model_fields[name].default


def systems(data_dir: Path, weights: Path) -> list[System]:
    w = str(weights)
    mm_env = {
        "MMSERVE_DATA_DIR": str(data_dir),
        "MMSERVE_PLUGINS": "captioning",
        "MMSERVE_PLUGIN_MODULES": "",
        "MMSERVE_TASKS__CAPTIONING__DEVICE": "cpu",
        "MMSERVE_TASKS__CAPTIONING__MAX_BATCH_SIZE": str(MAX_BATCH),
        "MMSERVE_TASKS__CAPTIONING__MAX_ACTIVE": str(MAX_BATCH),
        # Rows join the running decode batch at every step, so holding an idle engine's first
        # request for company only adds latency: 0 ms gave 167 vs 80 req/s at c=1 (p50 5.9 vs
        # 12.2 ms), 258 vs 236 at c=8 and the same at c=32 as the default 5 ms.
        "MMSERVE_TASKS__CAPTIONING__MAX_WAIT_MS": "0",
        "MMSERVE_TASKS__CAPTIONING__MAX_QUEUE": "256",
    }
    fixed = {"MMSERVE_DATA_DIR", "MMSERVE_PLUGINS", "MMSERVE_PLUGIN_MODULES", "MMSERVE_CONFIG", "MMSERVE_HOST",
             "MMSERVE_PORT", "MMSERVE_BACKEND"}  # the bench owns these (make exports MMSERVE_DATA_DIR)
    for key, value in os.environ.items():  # engine knobs from the caller win, e.g. MAX_BATCH_SIZE
        if key.startswith("MMSERVE_") and key not in fixed:
            mm_env[key] = value
    knobs = ", ".join(f"{k.removeprefix('MMSERVE_TASKS__CAPTIONING__').lower()}={v}" for k, v in sorted(mm_env.items())
                      if k.startswith("MMSERVE_TASKS__") and not k.endswith("DEVICE"))  # fmt: skip
    threads = mm_env.get("MMSERVE_PREPROCESS_THREADS", f"{_setting_default('preprocess_threads')} (default)")
    torch_threads = mm_env.get("MMSERVE_TORCH_THREADS", f"{_setting_default('torch_threads')} (default)")
    wait_ms = BATCH_WAIT_S * 1000
    return [
        System(
            "mmserve",
            [PY, "-m", "mmserve.server", "--log-level", "warning", "serve", "--host", "127.0.0.1", "--port", "{port}"],
            f"embedded backend, one uvicorn process; engine {knobs}; preprocess_threads {threads}; "
            f"torch_threads {torch_threads}; iteration-level decode loop (rows join and leave every step)",
            env=mm_env,
        ),
        System(
            "litserve-batched",
            [PY, "-m", "bench.peers.litserve_batched", "--port", "{port}", "--weights", w,
             "--max-batch-size", str(MAX_BATCH), "--batch-timeout", str(BATCH_WAIT_S), "--fast-queue"],
            f"LitServe batched loop: max_batch_size={MAX_BATCH}, batch_timeout={wait_ms:g} ms, 1 API server + "
            "1 inference worker process, fast_queue (ZeroMQ), OMP_NUM_THREADS=1; static batch = encode + greedy decode",
            env=ONE_THREAD,
        ),  # fmt: skip
        System(
            "litserve-cb",
            [PY, "-m", "bench.peers.litserve_cb", "--port", "{port}", "--weights", w,
             "--max-active", str(MAX_BATCH), "--fast-queue"],
            f"LitServe ContinuousBatchingLoop (stream=True): up to {MAX_BATCH} active rows, new rows encoded "
            "as one micro-batch and joined every step, a token line per row per step (`--emit final` gave "
            "215 vs 188 req/s at c=32 but sleeps 10 ms a step at low c), fast_queue (ZeroMQ)",
        ),  # fmt: skip
        System(
            "rayserve",
            [PY, "-m", "bench.peers.rayserve", "--port", "{port}", "--weights", w,
             "--max-batch-size", str(MAX_BATCH), "--batch-wait-s", str(RAY_BATCH_WAIT_S), "--max-ongoing", "256"],
            f"Ray Serve 1 replica, @serve.batch(max_batch_size={MAX_BATCH}, batch_wait_timeout_s={RAY_BATCH_WAIT_S:g}), "
            "max_ongoing_requests=256, static batch decoded in a thread; access log off",
            start_timeout_s=300.0,
        ),  # fmt: skip
        System(
            "fastapi",
            [PY, "-m", "bench.peers.fastapi_plain", "--port", "{port}", "--weights", w],
            "plain FastAPI + uvicorn, one model call per request (batch of 1) in one dedicated model thread, "
            "OMP_NUM_THREADS=1",
            env=ONE_THREAD,
        ),
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load:.2f} at start."
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("litserve", "ray", "fastapi", "uvicorn", "httpx", "aiohttp"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


def register_weights(data_dir: Path, weights: Path) -> None:
    """Register the weights as captioning@production in mmserve's fresh data dir, so mmserve
    serves exactly the artifact the peers load (it would otherwise register its bundled ones)."""
    code = (
        "import sys; from pathlib import Path; from registry.models import ModelRegistry; "
        "ModelRegistry(Path(sys.argv[1])).register('captioning', Path(sys.argv[2]), alias='production', "
        "description='bench weights')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([PY, "-c", code, str(data_dir), str(weights)], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def start(system: System, port: int, log_path: Path) -> subprocess.Popen:
    argv = [a.replace("{port}", str(port)) for a in system.argv]
    env = {**os.environ, **system.env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(proc: subprocess.Popen, url: str, body: bytes, timeout_s: float) -> None:
    """Ready = a real captioning request answers 200 with a caption."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            response = httpx.post(url, content=body, headers=HEADERS, timeout=30)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout_s:.0f} s ({last})")


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of its session is left (its
    workers; Ray's actors, which run in process groups of their own)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    for pid in [proc.pid, *session_pids(proc.pid)]:  # stragglers: the group, and Ray's own groups
        try:
            os.killpg(pid, signal.SIGKILL) if pid == proc.pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_subprocess(argv: list[str], timeout_s: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(argv, cwd=REPO, env=env, check=True, timeout=timeout_s)


def caption_lengths(levels: list[dict[str, Any]]) -> str:
    words = [len(c.split()) for lv in levels for c in lv["captions"].values()]
    return f"{min(words)}-{max(words)} (mean {sum(words) / len(words):.1f})" if words else "?"


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so `finally` stops the running server


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    weights = Path(os.environ.get("BENCH_WEIGHTS") or DEFAULT_WEIGHTS).resolve()
    out_dir = Path(os.environ.get("BENCH_OUT") or REPO / "bench" / "results")
    levels = [int(v) for v in os.environ.get("BENCH_LEVELS", ",".join(map(str, LEVELS))).split(",")]
    defaults = REQUESTS["quick" if quick else "full"]
    if os.environ.get("BENCH_REQUESTS"):
        given = [int(v) for v in os.environ["BENCH_REQUESTS"].split(",")]
        counts = given * len(levels) if len(given) == 1 else given
    else:
        counts = [defaults.get(c, max(defaults.values())) for c in levels]
    assert len(counts) == len(levels), "BENCH_REQUESTS needs one count, or one per level"
    http = os.environ.get("BENCH_HTTP", "aiohttp")
    quiet = ["--quiet-threshold", os.environ.get("BENCH_QUIET", "0.25"),
             "--quiet-wait-s", os.environ.get("BENCH_QUIET_WAIT", "5" if quick else "120"),
             "--retries", "0" if quick else "2"]  # fmt: skip
    only = {s.strip() for s in os.environ.get("BENCH_SYSTEMS", "").split(",") if s.strip()}
    if not (weights / "weights.safetensors").is_file():
        log(f"no captioning weights in {weights}: train them (make train-captioning) or set BENCH_WEIGHTS")
        return 2
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    busy = subprocess.run(["pgrep", "-f", "train"], capture_output=True, text=True).stdout.split()
    if busy:
        log(f"warning: other processes match 'train' ({', '.join(busy)}): numbers will be noisy")

    with tempfile.TemporaryDirectory(prefix="mmserve-bench-") as tmp:
        tmp_dir = Path(tmp)
        source_weights = weights
        weights = Path(shutil.copytree(weights, tmp_dir / "weights"))  # one snapshot for every system
        inputs = tmp_dir / "inputs"
        write_inputs(inputs, INPUT_COUNT)
        first_body = multipart_body(read_inputs(inputs)[0])
        results: dict[str, Any] = {
            "meta": {
                "started": stamp,
                "quick": quick,
                "weights": (
                    os.path.relpath(source_weights, REPO) if source_weights.is_relative_to(REPO) else str(source_weights)
                ),
                "weights_sha256": sha256(weights / "weights.safetensors"),
                "max_length": max_length(),
                "inputs": INPUT_COUNT,
                "levels": levels,
                "requests": dict(zip(map(str, levels), counts)),
                "http": http,
                "requests_note": "timed requests per level "
                + ", ".join(f"c={c}: {n}" for c, n in zip(levels, counts))
                + ", after an untimed warm-up of max(2c, 8) requests at the same concurrency",
                "machine": machine() + " " + versions() + ".",
                "other_load": busy,
            },
            "systems": [],
        }
        level_arg, count_arg = ",".join(map(str, levels)), ",".join(map(str, counts))

        log(f"bench: {'quick' if quick else 'full'} run, weights {source_weights}, levels {level_arg}, requests {count_arg}")
        bare_out = tmp_dir / "bare.json"
        bare: dict[str, Any] = {"name": report.BARE, "kind": "bare", "levels": [], "error": None,
                                "config": "no HTTP: preprocess + encode + greedy decode + postprocess of a fixed "
                                          "batch of c inputs in a tight loop (the limit)"}  # fmt: skip
        try:
            run_subprocess([PY, "-m", "bench.bare", "--weights", str(weights), "--inputs", str(inputs),
                            "--levels", level_arg, "--requests", count_arg, *quiet, "--out", str(bare_out)], 3600)  # fmt: skip
            bare["levels"] = json.loads(bare_out.read_text())["levels"]
        except Exception as exc:
            bare["error"] = f"{type(exc).__name__}: {exc}"
            log(f"bare model failed: {bare['error']}")
        results["systems"].append(bare)
        results["meta"]["caption_lengths"] = caption_lengths(bare["levels"])

        data_dir = tmp_dir / "mmserve-data"
        for system in systems(data_dir, weights):
            if only and system.name not in only:
                continue
            entry: dict[str, Any] = {"name": system.name, "kind": "server", "config": system.config,
                                     "levels": [], "error": None}  # fmt: skip
            results["systems"].append(entry)
            if system.name == "mmserve":
                register_weights(data_dir, weights)
            port = free_port()
            url = f"http://127.0.0.1:{port}{ENDPOINT}"
            server_log = tmp_dir / f"{system.name}.log"
            log(f"starting {system.name} on port {port}")
            began = time.monotonic()
            proc = start(system, port, server_log)
            try:
                wait_ready(proc, url, first_body, system.start_timeout_s)
                log(f"{system.name} ready after {time.monotonic() - began:.1f} s")
                out = tmp_dir / f"{system.name}.json"
                run_subprocess([PY, "-m", "bench.client", "--url", url, "--inputs", str(inputs),
                                "--levels", level_arg, "--requests", count_arg, "--label", system.name,
                                "--server-sid", str(proc.pid), "--http", http, *quiet, "--out", str(out)], 3600)  # fmt: skip
                entry["levels"] = json.loads(out.read_text())["levels"]
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                tail = server_log.read_text(errors="replace")[-1500:] if server_log.exists() else ""
                log(f"{system.name} failed: {entry['error']}\n--- server log tail ---\n{tail}")
            finally:
                stop(proc)

        results["meta"]["duration_s"] = time.monotonic() - started
        md, png, line = report.write(results, out_dir)
        print(md.read_text())
        print(f"table: {md}\nplot: {png}\nraw: {out_dir / 'latest.json'}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
