"""Over real HTTP: a full queue answers 503 with Retry-After, and a client that disconnects
frees its decode slot."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.server_process import running_server

pytestmark = pytest.mark.e2e

TEXT = {"content-type": "text/plain"}
LONG = b"x" * 2000  # 2000 decode steps of 2 ms: a slot held for ~4 s


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    env = {
        "MMSERVE_PLUGINS": "none",
        "MMSERVE_PLUGIN_MODULES": "tests.fixtures.slow_echo_plugin",
        "MMSERVE_MAX_OUTPUT_LENGTH": "4096",
        "MMSERVE_TASKS__SLOW__MAX_ACTIVE": "1",
        "MMSERVE_TASKS__SLOW__MAX_BATCH_SIZE": "1",
        "MMSERVE_TASKS__SLOW__MAX_QUEUE": "1",
    }
    with running_server(tmp_path_factory.mktemp("shedding"), env=env) as url:
        yield url


def _active(base: str) -> int:
    return httpx.get(f"{base}/v1/tasks", timeout=10).json()["tasks"][0]["active_sequences"]


def test_full_queue_answers_503_with_retry_after(base):
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(f"{base}/v1/slow?max_length=2000", content=LONG, headers=TEXT) for _ in range(6)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["Retry-After"] and "overloaded" in shed.json()["error"]
    accepted = [r for r in responses if r.status_code == 200]
    assert all(r.json()["text"] == LONG.decode().upper() for r in accepted)  # nothing accepted is lost


def _tokens(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith('mmserve_generated_tokens_total{task="slow"}'):
            return float(line.split()[-1])
    return 0.0


def test_disconnecting_client_frees_its_slot(base):
    before = _tokens(base)
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{base}/v1/slow?stream=true&max_length=2000", content=LONG, headers=TEXT) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: token"  # decoding has started
        # leaving the with-block closed the connection mid-stream
    time.sleep(1.0)
    deadline = time.monotonic() + 10
    while _active(base) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active(base) == 0
    # The sequence was dropped, not decoded to its end (2000 tokens at 2 ms each is ~4 s).
    generated = _tokens(base) - before
    assert 0 < generated < 1500, generated
    # The single slot is free again: a new request is served at once.
    response = httpx.post(f"{base}/v1/slow", content=b"next", headers=TEXT, timeout=30)
    assert response.json()["text"] == "NEXT"
