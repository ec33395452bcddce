"""The limit: the bare model in a tight loop, no HTTP, no server.

`--mode static` (default): at "concurrency" c it takes the next c inputs of the fixed input
set, and does the same work a server does per request: preprocess each upload (the task's own
function), encode the batch, greedy-decode it, postprocess every answer. Every request of a
batch has that batch's wall time as its latency (a finished row waits for the longest one);
throughput is requests over the total wall time. Long-decode: each input is a JSON request
body; the series goes through the task's preprocess and its `max_length` is that row's horizon.

`--mode continuous`: c rows decode in the engine's own `LengthBuckets` of `DecodingBatch`es, each
with its request's max_length; each step, finished rows leave and as many new inputs are
preprocessed, encoded together and joined. A request's latency is from its preprocessing to its
last step. This is continuous batching with no server around it: the limit for the long-decode
workload.

Output has the same shape as bench/client.py's.

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
from bench.common import (
    CAPTIONING,
    LONG_DECODE,
    answer_key,
    answer_text,
    caption_batch,
    load,
    machine_busy_cpu_s,
    max_length,
    preprocess,
    read_inputs,
    unpack_request,
    wait_for_quiet,
)


def prepare(task: Any, model: Any, data: bytes, length: int, workload: str) -> tuple[Any, int]:
    """One request's bytes -> (the task's input, its decode length): captioning uploads decode
    to `length`; a long-decode request body carries the series and its own max_length."""
    if workload == LONG_DECODE:
        series, horizon = unpack_request(data)
        return preprocess(task, model, series, workload), horizon
    return preprocess(task, model, data, workload), length


def continuous(
    task: Any, model: Any, pngs: list[bytes], rows: int, start: int, count: int, length: int, workload: str
) -> tuple[list[float], dict[int, str]]:
    """Requests start..start+count-1 through `rows` continuously refilled rows: (latencies, answers)."""
    import torch

    from mmserve.plugins.nn.decoding import DecodeParams, LengthBuckets, Sequence

    batch = LengthBuckets(model, "cpu")  # the engine's batching: one DecodingBatch per length bucket
    key = answer_key(workload)
    latencies: list[float] = []
    answers: dict[int, str] = {}
    next_i = start

    def admit(n: int) -> None:
        nonlocal next_i
        began = time.perf_counter()
        ids = list(range(next_i, next_i + n))
        next_i += n
        inputs, limits = zip(*(prepare(task, model, pngs[i % len(pngs)], length, workload) for i in ids))
        memory = model.encode(model.collate(list(inputs)))
        positions = memory.mask.sum(dim=1).tolist()
        batch.add(memory, model.init_state(memory), [Sequence(DecodeParams(max_length=n), int(m), tag=(i, began))
                                                     for i, n, m in zip(ids, limits, positions)])  # fmt: skip

    with torch.inference_mode():
        admit(min(rows, count))
        while batch.live_sequences:
            finished = batch.step().finished
            for seq, result in finished:
                i, began = seq.tag
                answers[i] = answer_text(task.postprocess(result, model, False)[key])
                latencies.append(time.perf_counter() - began)
            room = min(len(finished), start + count - next_i)
            if room > 0:
                admit(room)
    return latencies, answers


def run_level(
    task: Any, model: Any, pngs: list[bytes], batch: int, count: int, length: int, quiet: Quiet = Quiet(),
    workload: str = CAPTIONING, mode: str = "static",
) -> dict[str, Any]:  # fmt: skip
    label = "bare model" if mode == "static" else "bare continuous"

    def one_batch(start: int) -> tuple[float, list[str]]:
        began = time.perf_counter()
        data = [pngs[(start + j) % len(pngs)] for j in range(batch)]
        inputs, limits = zip(*(prepare(task, model, d, length, workload) for d in data))
        per_row = list(limits) if workload == LONG_DECODE else None  # long-decode: each row's own horizon
        answers = caption_batch(task, model, list(inputs), length, workload, per_row)
        elapsed = time.perf_counter() - began
        return elapsed, [answer_text(a) for a in answers]  # kept for the same-answer check, not timed

    if mode == "continuous":
        continuous(task, model, pngs, batch, 0, max(2 * batch, 8), length, workload)  # warm-up
    else:
        for start in range(0, max(2 * batch, 8), batch):  # warm-up, as the client does
            one_batch(start)
    bar = tqdm(total=count, desc=f"{label:<18} c={batch:<3}", unit="req", leave=False, file=sys.stderr)
    attempts = 0
    while True:
        attempts += 1
        wait_for_quiet(time.process_time, quiet.threshold, quiet.max_wait_s, lambda m: tqdm.write(m, file=sys.stderr))
        latencies: list[float] = []
        captions: dict[str, str] = {}
        bar.reset(total=count)
        started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_cpu_s()
        done = 0
        if mode == "continuous":
            latencies, answers = continuous(task, model, pngs, batch, 0, count, length, workload)
            for i, text in answers.items():
                captions.setdefault(str(i % len(pngs)), text)
            done = count
            bar.update(count)
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
        tqdm.write(f"  {label:<18} c={batch:<3} other processes used {other:.2f} cores meanwhile: "
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
    parser.add_argument("--workload", choices=[CAPTIONING, LONG_DECODE], default=CAPTIONING)
    parser.add_argument("--mode", choices=["static", "continuous"], default="static")
    parser.add_argument("--threads", default="0,1", help="torch thread counts to try per level (0: torch's default)")
    parser.add_argument("--inputs", required=True, help="directory of scene_*.png or request_*.json")
    parser.add_argument("--levels", default="1,8,32,64", help="batch sizes (the concurrency it stands for)")
    parser.add_argument("--requests", default="256", help="requests per level (one, or one per level)")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="see bench.client.Quiet")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    task, model = load(args.weights, args.workload)
    pngs = read_inputs(args.inputs)
    levels = [int(v) for v in args.levels.split(",")]
    counts = [int(v) for v in args.requests.split(",")]
    counts = counts * len(levels) if len(counts) == 1 else counts
    results = []
    import torch

    # The limit is the bare model at its best torch thread count: torch's default (one per
    # core) won on a quiet machine (821 vs 568 req/s at c=32), one thread wins when other jobs
    # share the cores (intra-op threads then wait on each other). Each level tries both.
    thread_counts = sorted({int(v) for v in args.threads.split(",")} or {torch.get_num_threads()}, reverse=True)
    default_threads = torch.get_num_threads()
    for batch, count in zip(levels, counts):
        quiet = Quiet(args.quiet_threshold, args.quiet_wait_s, args.retries)
        tried = []
        for threads in thread_counts:
            torch.set_num_threads(threads or default_threads)
            level = run_level(task, model, pngs, batch, count, max_length(args.workload), quiet, args.workload, args.mode)
            level["torch_threads"] = threads or default_threads
            tried.append(level)
        best = max(tried, key=lambda lv: lv["throughput"])
        best["tried"] = {str(lv["torch_threads"]): round(lv["throughput"], 2) for lv in tried}
        results.append(best)
        tqdm.write(f"  bare {args.mode:<13} c={batch:<3} {best['throughput']:8.1f} req/s (torch threads: req/s "
                   f"{best['tried']})", file=sys.stderr)  # fmt: skip
    args.out.write_text(json.dumps({"label": f"bare {args.mode}", "inputs": len(pngs), "levels": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
