"""MLflow as a separate tracking server that goes away: serving never depends on it being up.

- MLflow dies mid-run: the server keeps answering with the version it serves, and
  `mmserve models` says plainly that MLflow is unreachable (and what is cached);
- MLflow unreachable at start: a server on the same data directory serves the cached version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ECHO_MODULE
from tests.e2e.server_process import ROOT, free_port, running_server

pytestmark = pytest.mark.e2e

TEXT = {"content-type": "text/plain"}
MLFLOW = Path(sys.executable).with_name("mlflow")


def _start_mlflow(work: Path, port: int) -> subprocess.Popen:
    argv = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
            "--default-artifact-root", (work / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]  # fmt: skip
    log = (work / "mlflow.log").open("wb")
    process = subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"mlflow server did not start:\n{(work / 'mlflow.log').read_text()[-3000:]}")
        time.sleep(0.5)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # a crash, not a clean shutdown
        process.wait(30)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    work = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = _start_mlflow(work, port)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        _kill(process)


def _models_cli(data_dir: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMSERVE_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mmserve.server", "models"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_mlflow_dying_mid_run_and_down_at_start(mlflow_uri, tmp_path):
    uri, mlflow = mlflow_uri
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"MLFLOW_TRACKING_URI": uri, "MMSERVE_PLUGINS": "none", "MMSERVE_PLUGIN_MODULES": ECHO_MODULE,
           "MMSERVE_MODEL_POLL_INTERVAL_S": "0.5"}  # fmt: skip
    with running_server(data_dir, env=env) as base:
        first = httpx.post(f"{base}/v1/echo", content=b"up", headers=TEXT, timeout=30).json()
        assert first["text"] == "UP" and first["model"]["version"] == "1"
        listing = _models_cli(data_dir, uri)
        assert listing.returncode == 0 and "echo" in listing.stdout and "@production" in listing.stdout
        _kill(mlflow)
        time.sleep(2.0)  # several polls fail meanwhile
        for i in range(10):
            answer = httpx.post(f"{base}/v1/echo", content=f"down {i}".encode(), headers=TEXT, timeout=30)
            assert answer.status_code == 200 and answer.json()["text"] == f"DOWN {i}", answer.text
        ready = httpx.get(f"{base}/v2/health/ready", timeout=10)
        assert ready.status_code == 200
        down = _models_cli(data_dir, uri)
        assert down.returncode == 1, down
        assert f"MLflow is unreachable at {uri}" in down.stderr, down.stderr
        assert "echo: v1 @production" in down.stderr, down.stderr  # what is cached, and serves
    # A fresh start while MLflow is still down serves the cached version.
    with running_server(data_dir, env=env) as base:
        answer = httpx.post(f"{base}/v1/echo", content=b"cached", headers=TEXT, timeout=30).json()
        assert answer["text"] == "CACHED" and answer["model"]["version"] == "1"
        echo = [t for t in httpx.get(f"{base}/v1/tasks", timeout=10).json()["tasks"] if t["name"] == "echo"][0]
        assert echo["status"] == "ready" and echo["model"]["from_cache"] is True
