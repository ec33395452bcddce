"""The limit: the bare model captioning fixed batches in a tight loop, no HTTP, no server.

At "concurrency" c it takes the next c inputs of the fixed input set, and does the same work
a server does per request: preprocess each PNG (the task's own function), encode the batch,
greedy-decode it (rows leave the step batch as they finish), postprocess every caption. Every
request of a batch has that batch's wall time as its latency; throughput is requests over the
total wall time. Output has the same shape as bench/client.py's.

    python -m bench.bare --weights plugins/captioning/weights --inputs DIR --levels 1,8 --out bare.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.client import Quiet
from bench.common import caption_batch, load, machine_busy_cpu_s, max_length, preprocess, read_inputs, wait_for_quiet


def run_level(
    task: Any, model: Any, pngs: list[bytes], batch: int, count: int, length: int, quiet: Quiet = Quiet()
) -> dict[str, Any]:
    def one_batch(start: int) -> tuple[float, list[str]]:
        began = time.perf_counter()
        data = [pngs[(start + j) % len(pngs)] for j in range(batch)]
        captions = caption_batch(task, model, [preprocess(task, model, d) for d in data], length)
        return time.perf_counter() - began, captions

    for start in range(0, max(2 * batch, 8), batch):  # warm-up, as the client does
        one_batch(start)
    bar = tqdm(total=count, desc=f"{'bare model':<18} c={batch:<3}", unit="req", leave=False, file=sys.stderr)
    attempts = 0
    while True:
        attempts += 1
        wait_for_quiet(time.process_time, quiet.threshold, quiet.max_wait_s, lambda m: tqdm.write(m, file=sys.stderr))
        latencies: list[float] = []
        captions: dict[str, str] = {}
        bar.reset(total=count)
        started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_cpu_s()
        done = 0
        while done < count:
            elapsed, texts = one_batch(done)
            for j, text in enumerate(texts):
                captions.setdefault(str((done + j) % len(pngs)), text)
            latencies += [elapsed] * batch
            done += batch
            bar.update(batch)
        wall, cpu, busy = time.perf_counter() - started, time.process_time() - cpu, machine_busy_cpu_s() - busy
        other = (busy - cpu) / wall
        if other < quiet.threshold or attempts > quiet.retries:
            break
        tqdm.write(f"  {'bare model':<18} c={batch:<3} other processes used {other:.2f} cores meanwhile: "
                   "measuring again", file=sys.stderr)  # fmt: skip
    bar.close()
    return {
        "concurrency": batch,
        "requests": done,
        "ok": done,
        "errors": 0,
        "error_samples": [],
        "wall_s": wall,
        "throughput": done / wall,
        "server_cpu_s": cpu,  # this process: the model's whole CPU cost
        "client_cpu_s": 0.0,
        "machine_cpu_s": busy,
        "attempts": attempts,
        "latencies_s": latencies,
        "captions": dict(sorted(captions.items(), key=lambda kv: int(kv[0]))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--inputs", required=True, help="directory of scene_*.png")
    parser.add_argument("--levels", default="1,8,32,64", help="batch sizes (the concurrency it stands for)")
    parser.add_argument("--requests", default="256", help="requests per level (one, or one per level)")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="see bench.client.Quiet")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    task, model = load(args.weights)
    pngs = read_inputs(args.inputs)
    levels = [int(v) for v in args.levels.split(",")]
    counts = [int(v) for v in args.requests.split(",")]
    counts = counts * len(levels) if len(counts) == 1 else counts
    results = []
    for batch, count in zip(levels, counts):
        quiet = Quiet(args.quiet_threshold, args.quiet_wait_s, args.retries)
        results.append(run_level(task, model, pngs, batch, count, max_length(), quiet))
        tqdm.write(f"  {'bare model':<18} c={batch:<3} {results[-1]['throughput']:8.1f} req/s", file=sys.stderr)
    args.out.write_text(json.dumps({"label": "bare model", "inputs": len(pngs), "levels": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
