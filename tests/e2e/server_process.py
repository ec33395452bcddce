"""Start a real `mmserve serve` process on a free port for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    extra_path: list[Path] | None = None,
    include_examples: bool = True,
) -> Iterator[str]:
    """Yield the base URL of a server that answered /v2/health/live; stop it afterwards."""
    port = free_port()
    full_env = {
        **os.environ,
        "MMSERVE_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)]
            + ([str(ROOT / "examples" / "mmserve-echo" / "src")] if include_examples else [])
            + [str(p) for p in extra_path or []]
        ),
        **(env or {}),
    }
    log_path = data_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mmserve.server", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
                try:
                    if httpx.get(f"{base}/v2/health/live", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start in {timeout_s}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.25)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
