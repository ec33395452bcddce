"""CPU profile of one benchmarked server under load: where its cores go at concurrency c.

Starts the system as `make bench` does (same settings, same inputs), drives it with the
benchmark client at `--concurrency` for the whole profile, and records every process of the
server with py-spy (`pip install py-spy`) as collapsed stacks. Prints the functions with the
most own samples, and the share of samples per thread.

    python -m bench.profile --system mmserve --concurrency 32 --duration 20 --out /tmp/profile
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.client import multipart_body
from bench.common import DEFAULT_WEIGHTS, ENDPOINT, free_port, read_inputs, session_pids, write_inputs
from bench.run import PY, register_weights, start, stop, systems, wait_ready

PY_SPY = shutil.which("py-spy", path=str(Path(PY).parent)) or "py-spy"


def summarize(raw: Path, top: int) -> str:
    """Top functions by own samples (the last frame of each stack) and samples per thread."""
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        threads[frames[0]] += n
    out = [f"{total} samples", "", "own samples  share  function"]
    out += [f"{n:12d}  {100 * n / total:4.1f}%  {name}" for name, n in own.most_common(top)]
    out += ["", "samples by thread / process (first frame)"]
    out += [f"{n:12d}  {100 * n / total:4.1f}%  {name}" for name, n in threads.most_common(12)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="mmserve")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20, help="seconds recorded")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("profile"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmserve-profile-") as tmp:
        tmp_dir = Path(tmp)
        weights = Path(shutil.copytree(DEFAULT_WEIGHTS, tmp_dir / "weights"))
        inputs = tmp_dir / "inputs"
        write_inputs(inputs, 64)
        system = next(s for s in systems(tmp_dir / "mmserve-data", weights) if s.name == args.system)
        if system.role in ("mmserve", "ray"):
            register_weights(tmp_dir / "mmserve-data", weights)
        port = free_port()
        url = f"http://127.0.0.1:{port}{ENDPOINT}"
        proc = start(system, port, args.out / "server.log")
        client = None
        try:
            wait_ready(proc, url, multipart_body(read_inputs(inputs)[0]), system.start_timeout_s)
            count = args.concurrency * 2000  # more than the profile lasts; stopped below
            client = subprocess.Popen([PY, "-m", "bench.client", "--url", url, "--inputs", str(inputs), "--levels",
                                       str(args.concurrency), "--requests", str(count), "--http", "aiohttp",
                                       "--quiet-wait-s", "0", "--retries", "0", "--out", str(tmp_dir / "c.json")],
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(5)  # warm-up done, level running
            pids = [proc.pid, *[p for p in session_pids(proc.pid) if p != proc.pid]]
            records = []
            for pid in pids:
                raw = args.out / f"profile-{pid}.txt"
                records.append((pid, raw, subprocess.Popen(
                    [PY_SPY, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", str(args.rate),
                     "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))  # fmt: skip
            for _, _, rec in records:
                rec.wait()
        finally:
            if client is not None:
                client.kill()
            stop(proc)
    for pid, raw, _ in records:
        if raw.exists() and raw.stat().st_size:
            report = summarize(raw, args.top)
            (args.out / f"summary-{pid}.txt").write_text(report)
            print(f"===== pid {pid} ({raw}) =====\n{report}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
