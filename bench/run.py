"""`make bench`: every system, same weights, same machine, one run.

For each system in turn: start its server as a subprocess (own session) on a free
127.0.0.1 port, wait until a real request succeeds, drive it with the client process at each
of its concurrency levels, stop everything in that session. A bare-model loop runs in its own
process, with nothing else of ours running. Two workloads (see bench/common.py): captioning
(mmserve embedded and on Ray, the peers, no-op floors) and long-decode (the forecasting example,
each request with its own horizon of 10-400 steps). Then write bench/results/latest.md,
latest.png and latest.json, and print the summary as the very last line.

Environment:
  BENCH_QUICK=1          reduced run (fewer requests per level), under ~8 minutes
  BENCH_WEIGHTS=DIR      captioning artifact directory (default plugins/captioning/weights)
  BENCH_SYSTEMS=a,b      only these systems (names as in the table); a workload's bare model runs
                         whenever one of its systems does
  BENCH_LEVELS=1,8,16,32,64  captioning concurrency levels (16 and 32 are needed for the summary);
                         a system with its own levels (Ray, no-op) runs those of them listed here
  BENCH_LONG_LEVELS=8,32 long-decode concurrency levels (quick: 32; 32 is needed for the summary)
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
from bench.client import HEADERS, request_body
from bench.common import (
    CAPTIONING,
    DEFAULT_WEIGHTS,
    ENDPOINT,
    FORECAST_ENDPOINT,
    FORECAST_SRC,
    FORECAST_TOLERANCE,
    LONG_DECODE,
    LONG_HISTORY,
    LONG_MAX,
    LONG_MIN,
    REPO,
    free_port,
    long_decode_lengths,
    max_length,
    read_inputs,
    session_pids,
    write_inputs,
    write_requests,
)

PY = sys.executable
INPUT_COUNT = 64
LEVELS = (1, 8, 16, 32, 64)
LONG_LEVELS = {"full": (8, 32), "quick": (32,)}
# Timed requests per level: (full, quick). c=1 is slow and its tail settles with fewer.
REQUESTS = {"full": {1: 256, 8: 1024, 16: 1024, 32: 2048, 64: 2048},
            "quick": {1: 64, 8: 192, 16: 256, 32: 384, 64: 384}}  # fmt: skip
# Long-decode requests are ~36 forecast steps on average and up to 400: fewer of them per level.
LONG_REQUESTS = {"full": {8: 256, 32: 512}, "quick": {8: 128, 32: 192}}
RAY_LEVELS = (1, 16, 32)  # Ray and no-op systems: c=1 for the latency of each hop, 16 for W, 32 for X
MAX_BATCH = 64  # every batching system may batch up to the highest concurrency
BATCH_WAIT_S = 0.005  # LitServe's wait for a fuller batch: its best (1 ms gave 253 vs 380 req/s at c=32)
# Ray Serve's batch wait: 0.005 s gave 117 req/s at c=32, 0.02 s 163, 0.05 s 180 but adds 50 ms
# to every request at low concurrency; 0.02 s is its best compromise.
RAY_BATCH_WAIT_S = 0.02
# Per-system torch threads, from a sweep at c=32 on the 2-core machine: one intra-op thread
# helped LitServe's batched loop (355-380 -> 425-442 req/s) and plain FastAPI (111 -> 151),
# made no difference to Ray Serve, and hurt the bare model (821 -> 568) and LitServe's
# continuous batching (188 -> 173). On a machine shared with other jobs one thread wins by far
# (torch's intra-op threads wait on each other: the bare model at c=8 did 43.6 req/s with one
# thread vs 1.3 with two while others' training ran), so every peer now runs with one thread;
# the bare loops try both per level. mmserve sets its own (`torch_threads`, default 1).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@dataclass
class System:
    name: str
    argv: list[str]  # server command ({port} filled in), or bench.bare's for a bare loop
    config: str
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0
    workload: str = CAPTIONING
    role: str = "peer"  # see bench.report.ROLES
    levels: tuple[int, ...] | None = None  # its own concurrency levels (of those the run measures)
    bare: bool = False  # a bench.bare loop, not a server


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
    forecast_env = {  # long-decode: the forecast example as a plugin module, its engine knobs as captioning's
        **{k.replace("__CAPTIONING__", "__FORECAST__"): v for k, v in mm_env.items()},
        "MMSERVE_DATA_DIR": str(data_dir.parent / "mmserve-forecast-data"),
        "MMSERVE_PLUGINS": "none",
        "MMSERVE_PLUGIN_MODULES": "mmserve_forecast.plugin",
        "MMSERVE_MAX_OUTPUT_LENGTH": str(max_length(LONG_DECODE)),  # the server-wide cap (default 128)
    }
    threads = mm_env.get("MMSERVE_PREPROCESS_THREADS", f"{_setting_default('preprocess_threads')} (default)")
    torch_threads = mm_env.get("MMSERVE_TORCH_THREADS", f"{_setting_default('torch_threads')} (default)")
    wait_ms = BATCH_WAIT_S * 1000
    mm_serve = [PY, "-m", "mmserve.server", "--log-level", "warning", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    ray_env = {**mm_env, "MMSERVE_TASKS__CAPTIONING__NUM_REPLICAS": "1"}
    ray_env2 = {**mm_env, "MMSERVE_TASKS__CAPTIONING__NUM_REPLICAS": "2"}
    ray_config = (
        "Ray backend (`mmserve serve --backend ray`, local Ray on all cores): Ray HTTP proxy -> ingress replica "
        "(the embedded app's routes, num_cpus 0.25) -> {n} captioning replica(s) (num_cpus 0.5 each), each with the "
        f"same engine; engine {knobs}"
    )
    bare = [PY, "-m", "bench.bare", "--weights", w]
    long = [f"--workload={LONG_DECODE}"]
    horizons = f"{LONG_HISTORY} observed values, each request its own horizon of {LONG_MIN}-{LONG_MAX} steps"
    return [
        System(
            report.BARE, [*bare, "--mode", "static"],
            "no HTTP: preprocess + encode + greedy decode + postprocess of a fixed batch of c inputs in a tight loop, "
            "at its better torch thread count per level (default or 1; see latest.json `tried`) "
            "(the limit)", role="bare", bare=True,
        ),  # fmt: skip
        System(
            "mmserve",
            mm_serve,
            f"embedded backend, one uvicorn process; engine {knobs}; preprocess_threads {threads}; "
            f"torch_threads {torch_threads}; iteration-level decode loop (rows join and leave every step)",
            env=mm_env,
            role="mmserve",
        ),
        *(
            System(
                f"mmserve-{n}http",
                [PY, "-m", "bench.peers.mmserve_multiproc", "--port", "{port}", "--http-workers", str(n)],
                f"experiment: {n} HTTP front process(es) (Starlette, request parsing only) -> Unix socket -> one "
                f"engine process running mmserve's Inference; engine {knobs}; torch_threads {torch_threads}",
                env=mm_env, role="variant", levels=(8, 32),
            )
            for n in (1, 2)
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
            "215 vs 188 req/s at c=32 but sleeps 10 ms a step at low c), fast_queue (ZeroMQ), OMP_NUM_THREADS=1",
            env=ONE_THREAD,
        ),  # fmt: skip
        System(
            "rayserve",
            [PY, "-m", "bench.peers.rayserve", "--port", "{port}", "--weights", w,
             "--max-batch-size", str(MAX_BATCH), "--batch-wait-s", str(RAY_BATCH_WAIT_S), "--max-ongoing", "256"],
            f"Ray Serve 1 replica, @serve.batch(max_batch_size={MAX_BATCH}, batch_wait_timeout_s={RAY_BATCH_WAIT_S:g}), "
            "max_ongoing_requests=256, static batch decoded in a thread; access log off, OMP_NUM_THREADS=1",
            env=ONE_THREAD, start_timeout_s=300.0,
        ),  # fmt: skip
        System(
            "fastapi",
            [PY, "-m", "bench.peers.fastapi_plain", "--port", "{port}", "--weights", w],
            "plain FastAPI + uvicorn, one model call per request (batch of 1) in one dedicated model thread, "
            "OMP_NUM_THREADS=1",
            env=ONE_THREAD,
        ),
        System("mmserve-ray", [*mm_serve, "--backend", "ray"], ray_config.format(n=1), env=ray_env,
               start_timeout_s=300.0, role="ray", levels=RAY_LEVELS),
        System("mmserve-ray-2", [*mm_serve, "--backend", "ray"], ray_config.format(n=2), env=ray_env2,
               start_timeout_s=300.0, role="ray", levels=(16, 32)),
        System("no-op-ray", [PY, "-m", "bench.peers.noop_ray", "--port", "{port}", "--hops", "1"],
               "no model: Ray HTTP proxy -> 1 replica that reads the body and answers a fixed caption (Ray's floor)",
               start_timeout_s=300.0, role="floor", levels=RAY_LEVELS),
        System("no-op-ray-2hop", [PY, "-m", "bench.peers.noop_ray", "--port", "{port}", "--hops", "2"],
               "no model: Ray HTTP proxy -> ingress replica -> deployment handle -> replica answering at once "
               "(mmserve's Ray topology)", start_timeout_s=300.0, role="floor", levels=(1, 16)),
        System("no-op-fastapi", [PY, "-m", "bench.peers.noop_fastapi", "--port", "{port}"],
               "no model: plain FastAPI + uvicorn reading the body and answering at once (the HTTP floor)",
               role="floor", levels=(1, 16)),
        # ----- long-decode: the forecast example, per-request horizons of 10-400 steps, heavy-tailed -----
        System(
            "long: bare static", [*bare, *long, "--mode", "static"],
            f"no HTTP: fixed batches of c series ({horizons}), preprocess + encode + greedy decode (each row stops "
            "at its own horizon) + postprocess; every request of a batch waits for its longest row",
            workload=LONG_DECODE, bare=True,
        ),  # fmt: skip
        System(
            "long: bare continuous", [*bare, *long, "--mode", "continuous"],
            "no HTTP: c rows in the engine's LengthBuckets of DecodingBatches, each with its request's max_length; each "
            "step finished rows leave and new series are encoded and joined (the limit)", workload=LONG_DECODE,
            role="limit", bare=True,
        ),  # fmt: skip
        System(
            "long: mmserve", mm_serve,
            "embedded backend, forecast example as a plugin module, JSON body with the request's max_length "
            f"(server cap {max_length(LONG_DECODE)}); engine " + knobs.replace("captioning", "forecast"),
            env=forecast_env, workload=LONG_DECODE, role="mmserve",
        ),  # fmt: skip
        System(
            "long: litserve-batched",
            [PY, "-m", "bench.peers.litserve_batched", "--port", "{port}", "--weights", w, *long,
             "--max-batch-size", str(MAX_BATCH), "--batch-timeout", str(BATCH_WAIT_S), "--fast-queue"],
            f"LitServe batched loop as above (max_batch_size={MAX_BATCH}, batch_timeout={wait_ms:g} ms), forecast "
            "model: a static batch, each row stopping at its own horizon, answers sent when the longest ends",
            env=ONE_THREAD, workload=LONG_DECODE,
        ),
        System(
            "long: litserve-cb",
            [PY, "-m", "bench.peers.litserve_cb", "--port", "{port}", "--weights", w, *long,
             "--max-active", str(MAX_BATCH), "--fast-queue"],
            f"LitServe ContinuousBatchingLoop as above (up to {MAX_BATCH} active rows), forecast model: a row leaves "
            "at its own horizon, a value line per row per step",
            env=ONE_THREAD, workload=LONG_DECODE,
        ),
    ]  # fmt: skip


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
        "import sys; from pathlib import Path; from mmserve.registry.models import ModelRegistry; "
        "ModelRegistry(Path(sys.argv[1])).register('captioning', Path(sys.argv[2]), alias='production', "
        "description='bench weights')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([PY, "-c", code, str(data_dir), str(weights)], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def start(system: System, port: int, log_path: Path) -> subprocess.Popen:
    argv = [a.replace("{port}", str(port)) for a in system.argv]
    path = os.pathsep.join([str(REPO), str(FORECAST_SRC)] if system.workload == LONG_DECODE else [str(REPO)])
    env = {**os.environ, **system.env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(
    proc: subprocess.Popen, url: str, body: bytes, timeout_s: float, headers: dict[str, str] = HEADERS
) -> None:
    """Ready = a real request (the workload's first input) answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=30)
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(FORECAST_SRC)])}
    subprocess.run(argv, cwd=REPO, env=env, check=True, timeout=timeout_s)


def caption_lengths(levels: list[dict[str, Any]]) -> str:
    words = [len(c.split()) for lv in levels for c in lv["captions"].values()]
    return f"{min(words)}-{max(words)} (mean {sum(words) / len(words):.1f})" if words else "?"


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so `finally` stops the running server


def counts_for(levels: list[int], table: dict[int, int]) -> list[int]:
    return [table.get(c, max(table.values())) for c in levels]


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    mode = "quick" if quick else "full"
    weights = Path(os.environ.get("BENCH_WEIGHTS") or DEFAULT_WEIGHTS).resolve()
    out_dir = Path(os.environ.get("BENCH_OUT") or REPO / "bench" / "results")
    levels = [int(v) for v in os.environ.get("BENCH_LEVELS", ",".join(map(str, LEVELS))).split(",")]
    long_levels = [int(v) for v in os.environ.get("BENCH_LONG_LEVELS", ",".join(map(str, LONG_LEVELS[mode]))).split(",")]
    if os.environ.get("BENCH_REQUESTS"):
        given = [int(v) for v in os.environ["BENCH_REQUESTS"].split(",")]
        counts = given * len(levels) if len(given) == 1 else given
    else:
        counts = counts_for(levels, REQUESTS[mode])
    assert len(counts) == len(levels), "BENCH_REQUESTS needs one count, or one per level"
    per_level = {CAPTIONING: dict(zip(levels, counts)), LONG_DECODE: dict(zip(long_levels, counts_for(long_levels, LONG_REQUESTS[mode])))}
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
        inputs = {CAPTIONING: tmp_dir / "inputs", LONG_DECODE: tmp_dir / "requests"}
        write_inputs(inputs[CAPTIONING], INPUT_COUNT)
        write_requests(inputs[LONG_DECODE], INPUT_COUNT)
        first_request = {w: request_body(read_inputs(d)[0], w) for w, d in inputs.items()}
        steps = long_decode_lengths(INPUT_COUNT)
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
                "long_levels": long_levels,
                "requests": dict(zip(map(str, levels), counts)),
                "http": http,
                "requests_note": "timed requests per level "
                + ", ".join(f"c={c}: {n}" for c, n in zip(levels, counts))
                + " (long-decode "
                + ", ".join(f"c={c}: {n}" for c, n in per_level[LONG_DECODE].items())
                + "), after an untimed warm-up of max(2c, 8) requests at the same concurrency",
                "long_decode": f"forecast example (examples/mmserve-forecast, its bundled weights: BiGRU encoder, "
                f"attention GRU decoder, Gaussian head), {INPUT_COUNT} synthetic series of {LONG_HISTORY} values, each "
                f"request a JSON body with its own horizon max_length of {min(steps)}-{max(steps)} steps (truncated "
                f"Pareto, alpha 1.2: median {sorted(steps)[len(steps) // 2]}, mean {sum(steps) / len(steps):.1f}); "
                f"greedy (the mean path); an answer equals the bare model's when it has the same length and every "
                f"value is within {FORECAST_TOLERANCE:g}",
                "machine": machine() + " " + versions() + ".",
                "other_load": busy,
            },
            "systems": [],
        }
        chosen = [s for s in systems(tmp_dir / "mmserve-data", weights) if not only or s.name in only]
        workloads = {s.workload for s in chosen}
        chosen = [s for s in systems(tmp_dir / "mmserve-data", weights)
                  if not only or s.name in only or (s.bare and s.workload in workloads)]  # fmt: skip
        log(f"bench: {mode} run, weights {source_weights}, levels {levels} requests {counts}, long-decode "
            f"{per_level[LONG_DECODE]}: {', '.join(s.name for s in chosen)}")  # fmt: skip
        registered = False
        for system in chosen:
            wanted = per_level[system.workload]
            mine = [c for c in wanted if system.levels is None or c in system.levels]
            entry: dict[str, Any] = {"name": system.name, "kind": "bare" if system.bare else "server",
                                     "workload": system.workload, "role": system.role, "config": system.config,
                                     "levels": [], "error": None}  # fmt: skip
            results["systems"].append(entry)
            if not mine:
                entry["error"] = "no concurrency level of this run is one of its own"
                continue
            level_arg, count_arg = ",".join(map(str, mine)), ",".join(str(wanted[c]) for c in mine)
            out = tmp_dir / f"{system.name.replace(' ', '_').replace(':', '')}.json"
            if system.bare:
                try:
                    run_subprocess([*system.argv, "--inputs", str(inputs[system.workload]), "--levels", level_arg,
                                    "--requests", count_arg, *quiet, "--out", str(out)], 3600)  # fmt: skip
                    entry["levels"] = json.loads(out.read_text())["levels"]
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    log(f"{system.name} failed: {entry['error']}")
                continue
            if system.role in ("mmserve", "ray") and system.workload == CAPTIONING and not registered:
                register_weights(tmp_dir / "mmserve-data", weights)
                registered = True
            port = free_port()
            path = FORECAST_ENDPOINT if system.workload == LONG_DECODE else ENDPOINT  # the body has max_length
            url = f"http://127.0.0.1:{port}{path}"
            server_log = tmp_dir / f"{out.stem}.log"
            log(f"starting {system.name} on port {port}")
            began = time.monotonic()
            proc = start(system, port, server_log)
            try:
                body, headers = first_request[system.workload]
                wait_ready(proc, url, body, system.start_timeout_s, headers)
                log(f"{system.name} ready after {time.monotonic() - began:.1f} s")
                run_subprocess([PY, "-m", "bench.client", "--url", url, "--inputs", str(inputs[system.workload]),
                                "--levels", level_arg, "--requests", count_arg, "--label", system.name,
                                "--server-sid", str(proc.pid), "--http", http, *quiet, "--out", str(out)], 3600)  # fmt: skip
                entry["levels"] = json.loads(out.read_text())["levels"]
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                tail = server_log.read_text(errors="replace")[-1500:] if server_log.exists() else ""
                log(f"{system.name} failed: {entry['error']}\n--- server log tail ---\n{tail}")
            finally:
                stop(proc)
        bare = next((s for s in results["systems"] if s["name"] == report.BARE), None)
        results["meta"]["caption_lengths"] = caption_lengths(bare["levels"]) if bare else "?"

        results["meta"]["duration_s"] = time.monotonic() - started
        md, png, line = report.write(results, out_dir)
        print(md.read_text())
        print(f"table: {md}\nplot: {png}\nraw: {out_dir / 'latest.json'}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
