"""What every benchmarked system shares: the model, the per-request work, the input set.

Every peer does exactly the same work per request through these functions: decode the upload
with the task's own `preprocess`, encode, greedy-decode, and `postprocess` to the answer
string. Only the serving around that work differs.

Two workloads:
- `captioning`: the captioning plugin on 64 digit-scene PNGs; greedy to the task's
  `default_max_length` (captions of 2-9 words, so decode lengths vary little).
- `long-decode`: the echo example (`examples/mmserve-echo`: one output per input character,
  then <eos>) on 64 texts whose lengths follow a truncated Pareto distribution between
  LONG_MIN and LONG_MAX characters, so decode lengths span 10 to 400 steps with a heavy tail.
  A static batch waits for its longest row; continuous batching refills finished rows.
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
CAPTIONING, LONG_DECODE = "captioning", "long-decode"
ECHO_SRC = REPO / "examples" / "mmserve-echo" / "src"
ECHO_ENDPOINT = "/v1/echo"  # long-decode peers serve this path: multipart `file` (text) -> {"text": ...}
LONG_MIN, LONG_MAX, LONG_ALPHA = 10, 400, 1.2  # output steps: Pareto(alpha) from LONG_MIN, cut at LONG_MAX
LONG_MAX_LENGTH = LONG_MAX + 1  # every character, then <eos>


def max_length(workload: str = CAPTIONING) -> int:
    """Greedy decoding limit for everyone: the captioning task's default (what mmserve uses);
    long-decode: room for the longest text and its <eos> (mmserve gets it as `max_length`)."""
    if workload == LONG_DECODE:
        return LONG_MAX_LENGTH
    from mmserve.plugins.captioning.task import CaptioningTask

    return CaptioningTask.default_max_length


def load(weights: str | Path, workload: str = CAPTIONING) -> tuple[Any, Any]:
    """(task, model in eval mode on CPU): the captioning task with the artifact in `weights`,
    or for long-decode the echo example's task (no weights)."""
    import torch

    if workload == LONG_DECODE:
        import sys

        sys.path.insert(0, str(ECHO_SRC))  # the example is a third-party package, not installed here
        from mmserve_echo.task import EchoTask

        task = EchoTask()
        return task, task.load_model(task.bundled_artifacts(), torch.device("cpu"))
    assert workload == CAPTIONING, f"unknown workload {workload!r}"
    from mmserve.plugins.captioning.task import CaptioningTask

    task = CaptioningTask()
    model = task.load_model(Path(weights), torch.device("cpu"))
    return task, model


def answer_key(workload: str) -> str:
    """The JSON field of the answer string: the caption, or the echoed text."""
    return "text" if workload == LONG_DECODE else "caption"


def content_type(workload: str) -> str:
    return "text/plain" if workload == LONG_DECODE else CONTENT_TYPE


def preprocess(task: Any, model: Any, data: bytes, workload: str = CAPTIONING) -> Any:
    """Upload bytes -> the task's input tensor, with the server's default input limits."""
    from mmserve.plugins.task import InputLimits

    return task.preprocess(data, content_type(workload), model, InputLimits())


def caption_batch(task: Any, model: Any, inputs: list[Any], length: int, workload: str = CAPTIONING) -> list[str]:
    """Static batch: encode the inputs together, greedy-decode them (finished rows are skipped
    once enough of them are dead, but the batch lasts as long as its longest row), and
    postprocess each to its answer string. This is `plugins.nn.search.greedy_decode`, the
    shared search code, without server batching; no attention kept (the server's default)."""
    import torch

    from mmserve.plugins.nn.search import greedy_decode

    with torch.inference_mode():
        memory = model.encode(model.collate(inputs))
        results = greedy_decode(model, memory, length, keep_attention=False)
    key = answer_key(workload)
    return [task.postprocess(r, model, False)[key] for r in results]


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


def write_texts(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` lower-case texts (letters and spaces) with long_decode_lengths() characters."""
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(long_decode_lengths(count, seed)):
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz    ") for _ in range(n)).strip()
        text = (text + "x" * n)[:n]  # exactly n characters, no leading or trailing space lost
        path = directory / f"text_{i:04d}.txt"
        path.write_bytes(text.encode())
        paths.append(path)
    return paths


def read_inputs(directory: str | Path) -> list[bytes]:
    """The input set's bytes in order: scene_*.png (captioning) or text_*.txt (long-decode)."""
    paths = sorted(Path(directory).glob("scene_*.png")) or sorted(Path(directory).glob("text_*.txt"))
    return [p.read_bytes() for p in paths]


def inputs_content_type(directory: str | Path) -> str:
    return content_type(LONG_DECODE if any(Path(directory).glob("text_*.txt")) else CAPTIONING)


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
