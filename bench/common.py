"""What every benchmarked system shares: the model, the per-request work, the input set.

Every peer does exactly the same work per request through these functions: decode the upload
with the task's own `preprocess`, encode, greedy-decode, and `postprocess` to the answer
string. Only the serving around that work differs.

Two workloads:
- `captioning`: the captioning plugin on 64 digit-scene PNGs; greedy to the task's
  `default_max_length` (captions of 2-9 words, so decode lengths vary little).
- `long-decode`: the forecasting example (`examples/mmserve-forecast`: a trained BiGRU encoder
  and an attention decoder with a Gaussian head) on 64 synthetic series of LONG_HISTORY values,
  each request carrying its own horizon (`max_length`) from a truncated Pareto distribution
  between LONG_MIN and LONG_MAX, so decode lengths span 10 to 400 steps with a heavy tail. A
  Gaussian head has no end token: a row ends at its horizon. Every system stops each row at
  its own horizon (the shared decode loop takes a max_length per row); a static batch then
  lasts as long as its longest row, with its finished rows' slots empty, while continuous
  batching refills a finished row's slot at the next step.

A long-decode input is one JSON request body, the same bytes for every system:
`{"data": <base64 of the series as a JSON array>, "content_type": "application/json",
"max_length": <horizon>}` (mmserve reads JSON bodies as `data` + parameters).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "plugins" / "captioning" / "weights"
CONTENT_TYPE = "image/png"
ENDPOINT = "/v1/captioning"  # every peer serves this path: multipart `file` -> {"caption": ...}
CAPTIONING, LONG_DECODE = "captioning", "long-decode"
FORECAST_SRC = REPO / "examples" / "mmserve-forecast" / "src"
# Long-decode peers serve this path: a JSON body (see the module docstring) -> {"forecast": [...], ...}
FORECAST_ENDPOINT = "/v1/forecast"
LONG_MIN, LONG_MAX, LONG_ALPHA = 10, 400, 1.2  # output steps: Pareto(alpha) from LONG_MIN, cut at LONG_MAX
LONG_MAX_LENGTH = LONG_MAX  # a Gaussian head has no end token: the longest horizon is the limit
LONG_HISTORY = 64  # observed values per series: what the example's weights were trained and evaluated on
LONG_SEED = 20_000  # series generator seed: neither training's (0) nor the held-out metrics' (10000)
JSON_TYPE = "application/json"
# Forecasts of the same series agree across batch compositions to ~1e-5 over 400 steps (float
# rounding in batched matmuls, measured); an answer counts as equal to the bare model's when
# every value is within this (values are O(10)).
FORECAST_TOLERANCE = 1e-3


def max_length(workload: str = CAPTIONING) -> int:
    """Greedy decoding limit for everyone: the captioning task's default (what mmserve uses);
    long-decode: the longest horizon (mmserve's output length cap; each request asks for its own)."""
    if workload == LONG_DECODE:
        return LONG_MAX_LENGTH
    from mmserve.plugins.captioning.task import CaptioningTask

    return CaptioningTask.default_max_length


def _forecast_importable() -> None:
    if str(FORECAST_SRC) not in sys.path:  # the example is a third-party package, not installed here
        sys.path.insert(0, str(FORECAST_SRC))


def load(weights: str | Path, workload: str = CAPTIONING) -> tuple[Any, Any]:
    """(task, model in eval mode on CPU): the captioning task with the artifact in `weights`,
    or for long-decode the forecasting example's task with its bundled weights."""
    import torch

    if workload == LONG_DECODE:
        _forecast_importable()
        from mmserve_forecast.task import ForecastTask

        task = ForecastTask()
        return task, task.load_model(task.bundled_artifacts(), torch.device("cpu"))
    assert workload == CAPTIONING, f"unknown workload {workload!r}"
    from mmserve.plugins.captioning.task import CaptioningTask

    task = CaptioningTask()
    model = task.load_model(Path(weights), torch.device("cpu"))
    return task, model


def answer_key(workload: str) -> str:
    """The JSON field of the answer: the caption, or the forecast (a list of values)."""
    return "forecast" if workload == LONG_DECODE else "caption"


def answer_text(answer: Any) -> str:
    """An answer as the string the results keep: a caption as is, a forecast as its JSON array
    to 6 decimals (compared with FORECAST_TOLERANCE by bench.report, not character by character)."""
    return answer if isinstance(answer, str) else json.dumps([round(float(v), 6) for v in answer])


def content_type(workload: str) -> str:
    """Content type of the task's input bytes: PNG, or the series as a JSON array."""
    return JSON_TYPE if workload == LONG_DECODE else CONTENT_TYPE


def forecast_request(series: list[float], horizon: int) -> bytes:
    """One long-decode request body: the series (JSON array, base64) and its own horizon."""
    data = base64.b64encode(json.dumps(series).encode()).decode()
    return json.dumps({"data": data, "content_type": JSON_TYPE, "max_length": horizon}).encode()


def unpack_request(body: bytes | dict[str, Any]) -> tuple[bytes, int]:
    """A long-decode request body (bytes, or LitServe's parsed JSON) -> (series bytes, horizon)."""
    fields = json.loads(body) if isinstance(body, (bytes, str)) else body
    return base64.b64decode(fields["data"]), int(fields["max_length"])


def preprocess(task: Any, model: Any, data: bytes, workload: str = CAPTIONING) -> Any:
    """Input bytes -> the task's input tensor, with the server's default input limits."""
    from mmserve.plugins.task import InputLimits

    return task.preprocess(data, content_type(workload), model, InputLimits())


def caption_batch(
    task: Any, model: Any, inputs: list[Any], length: int, workload: str = CAPTIONING, lengths: list[int] | None = None
) -> list[Any]:
    """Static batch: encode the inputs together, greedy-decode them (finished rows are skipped
    once enough of them are dead, but the batch lasts as long as its longest row), and
    postprocess each to its answer (a caption string, or a forecast list). This is the shared search code (`plugins.nn.search`)
    without server batching; no attention kept (the server's default).

    `lengths` (long-decode): each row's own horizon, as the request asked; the shared decode
    loop takes a max_length per row, so a row stops at its horizon and its slot is dropped, but
    no new row takes it and every request of the batch waits for the longest: a static
    batcher's waste is the waiting, not extra decoder steps."""
    import torch

    from mmserve.plugins.nn.search import greedy_decode

    assert lengths is None or len(lengths) == len(inputs), f"{len(lengths or [])} lengths for {len(inputs)} inputs"
    with torch.inference_mode():
        memory = model.encode(model.collate(inputs))
        if lengths is None:
            results = greedy_decode(model, memory, length, keep_attention=False)
        else:
            results = decode_rows(model, memory, lengths)
    key = answer_key(workload)
    return [task.postprocess(r, model, False)[key] for r in results]


def decode_rows(model: Any, memory: Any, lengths: list[int]) -> list[Any]:
    """Greedy decoding of every row of `memory` to its own max_length, in one batch to the end:
    `plugins.nn.search.decode` with one DecodeParams per row (what the engine gives a request)."""
    from mmserve.plugins.nn.decoding import DecodeParams, DecodingBatch, Sequence

    batch = DecodingBatch(model, memory.values.device)
    positions = memory.mask.sum(dim=1).tolist()
    batch.add(memory, model.init_state(memory),
              [Sequence(DecodeParams(max_length=n), int(m), tag=i) for i, (n, m) in enumerate(zip(lengths, positions))])  # fmt: skip
    results: dict[int, Any] = {}
    while batch.live_sequences:
        for seq, result in batch.step().finished:
            results[seq.tag] = result
    return [results[i] for i in range(len(lengths))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` digit-scene PNGs (test split, 1-4 digits, so caption lengths vary), written once
    so every system and the bare loop read the very same bytes."""
    from mmserve.plugins.captioning.data import make_example

    directory.mkdir(parents=True, exist_ok=True)
    paths, refs = [], []
    for i in range(count):
        example = make_example(i, split="test", seed=seed)
        path = directory / f"scene_{i:04d}.png"
        path.write_bytes(example.png)
        paths.append(path)
        refs.append({"file": path.name, "labels": example.labels, "references": example.references})
    (directory / "references.json").write_text(json.dumps(refs, indent=1))
    return paths


def long_decode_lengths(count: int, seed: int = 0) -> list[int]:
    """`count` output lengths from a Pareto(LONG_ALPHA) tail starting at LONG_MIN, cut at
    LONG_MAX: the distribution's quantiles at (i + 0.5) / count, shuffled, so the set always
    has the same heavy tail (median ~18, a few rows at the 400 cap)."""
    import random

    lengths = [min(LONG_MAX, round(LONG_MIN * (1 - (i + 0.5) / count) ** (-1 / LONG_ALPHA))) for i in range(count)]
    random.Random(seed).shuffle(lengths)
    return lengths


def write_requests(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` long-decode request bodies (request_*.json): synthetic series of LONG_HISTORY
    values from the example's own generator (sine + trend + noise, the distribution its weights
    were trained on), request i asking for long_decode_lengths()[i] steps."""
    import numpy as np

    _forecast_importable()
    from mmserve_forecast.data import make_series

    series = make_series(np.random.default_rng(LONG_SEED + seed), count, LONG_HISTORY)  # [count, LONG_HISTORY]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (values, horizon) in enumerate(zip(series, long_decode_lengths(count, seed))):
        path = directory / f"request_{i:04d}.json"
        path.write_bytes(forecast_request([round(float(v), 4) for v in values], horizon))
        paths.append(path)
    return paths


def read_inputs(directory: str | Path) -> list[bytes]:
    """The input set's bytes in order: scene_*.png (captioning) or request_*.json (long-decode)."""
    paths = sorted(Path(directory).glob("scene_*.png")) or sorted(Path(directory).glob("request_*.json"))
    return [p.read_bytes() for p in paths]


def inputs_workload(directory: str | Path) -> str:
    return LONG_DECODE if any(Path(directory).glob("request_*.json")) else CAPTIONING


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a server started with start_new_session=True, so its
    session id is its pid): its workers, and Ray's processes, which take their own process
    groups but stay in the session."""
    pids = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if pid.isdigit():
            fields = _stat_fields(pid)
            if fields and int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
                pids.append(int(pid))
    return pids


def session_cpu_s(sid: int | None) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid` (the
    server and everything it started), read from /proc; 0 where that is not available."""
    if not sid:
        return 0.0
    total = 0
    for pid in session_pids(sid):
        fields = _stat_fields(str(pid))
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:  # gone, or not ours to read
        return None


def machine_busy_cpu_s() -> float:
    """CPU seconds all cores of the machine spent not idle so far (/proc/stat); 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(
    own_cpu_s: Callable[[], float], threshold: float, max_wait_s: float, say: Callable[[str], None]
) -> float:
    """Wait until processes outside the benchmark use under `threshold` cores (measured over
    1 s windows; `own_cpu_s` gives the CPU seconds of the benchmark's own processes), or until
    `max_wait_s` passed. Returns the last measured outside load in cores."""
    deadline = time.monotonic() + max_wait_s
    told = False
    while True:
        busy, own, began = machine_busy_cpu_s(), own_cpu_s(), time.monotonic()
        time.sleep(1.0)
        other = (machine_busy_cpu_s() - busy - (own_cpu_s() - own)) / (time.monotonic() - began)
        if other < threshold or time.monotonic() > deadline:
            return other
        if not told:
            say(f"  waiting for the machine to be quiet: other processes use {other:.2f} cores")
            told = True
