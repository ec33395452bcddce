"""What every benchmarked system shares: the model, the per-request work, the input set.

Every peer does exactly the same work per request through these functions: decode the PNG
with the captioning task's own `preprocess`, encode, greedy-decode to `MAX_LENGTH` tokens,
and `postprocess` to the caption string. Only the serving around that work differs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "plugins" / "captioning" / "weights"
CONTENT_TYPE = "image/png"
ENDPOINT = "/v1/captioning"  # every peer serves this path: multipart `file` -> {"caption": ...}


def max_length() -> int:
    """Greedy decoding limit for everyone: the captioning task's default (what mmserve uses)."""
    from mmserve.plugins.captioning.task import CaptioningTask

    return CaptioningTask.default_max_length


def load(weights: str | Path) -> tuple[Any, Any]:
    """(CaptioningTask, Captioner in eval mode on CPU) from an artifact directory."""
    import torch

    from mmserve.plugins.captioning.task import CaptioningTask

    task = CaptioningTask()
    model = task.load_model(Path(weights), torch.device("cpu"))
    return task, model


def preprocess(task: Any, model: Any, data: bytes) -> Any:
    """PNG bytes -> input tensor [3, H, W], with the server's default input limits."""
    from mmserve.plugins.task import InputLimits

    return task.preprocess(data, CONTENT_TYPE, model, InputLimits())


def caption_batch(task: Any, model: Any, inputs: list[Any], length: int) -> list[str]:
    """Static batch: encode the inputs together, greedy-decode them (rows leave the step batch
    as they finish), and postprocess each to its caption. This is `plugins.nn.search.greedy_decode`,
    the shared search code, without server batching."""
    import torch

    from mmserve.plugins.nn.search import greedy_decode

    with torch.inference_mode():
        memory = model.encode(model.collate(inputs))
        results = greedy_decode(model, memory, length)
    return [task.postprocess(r, model, False)["caption"] for r in results]


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


def read_inputs(directory: str | Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(directory).glob("scene_*.png"))]


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
