"""The shared latency client: every upload is sent at each concurrency and a failure is raised."""

from __future__ import annotations

import threading

import httpx
import pytest

from mmserve.plugins.latency import Upload, measure


def test_every_upload_is_posted_at_each_concurrency_and_summarised():
    seen: list[bytes] = []
    lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/task" and b'name="file"' in request.content
        with lock:
            seen.append(request.content)
        return httpx.Response(200, json={"text": "ok"})

    uploads = [Upload(f"c{i}.wav", bytes([i]) * 10, "audio/wav", 1.5) for i in range(5)]
    rows = measure("http://test/v1/task", uploads, [1, 3], warmup=2, transport=httpx.MockTransport(answer))
    assert len(seen) == 2 + 5 + 5  # the warm-up, then every upload once per concurrency
    assert [r["concurrency"] for r in rows] == [1, 3]
    for row in rows:
        assert row["requests"] == 5 and row["media_s"] == 7.5
        assert 0 <= row["p50_s"] <= row["p99_s"] and row["requests_per_s"] > 0 and row["rtf"] >= 0


def test_an_error_answer_fails_the_measurement():
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json={"error": "bad"}))
    with pytest.raises(httpx.HTTPStatusError):
        measure("http://test/v1/task", [Upload("c.wav", b"x", "audio/wav", 1.0)], [1], transport=transport)


def test_a_tasks_own_flags_reach_its_uploads(monkeypatch, capsys):
    from mmserve.plugins import latency

    built = {}

    def uploads(count: int, join: int = 1) -> list[Upload]:
        built.update(count=count, join=join)
        return [Upload("c.wav", b"x", "audio/wav", 1.0)]

    monkeypatch.setattr(latency, "measure", lambda url, ups, levels: [{"url": url, "uploads": len(ups), "levels": levels}])
    latency.main("doc", "speech", uploads, {"--join": {"type": int, "default": 1}},
                 argv=["--clips", "6", "--join", "4", "--concurrency", "2", "--params", "beam_size=1"])  # fmt: skip
    assert built == {"count": 6, "join": 4}
    assert '"url": "http://127.0.0.1:8000/v1/speech?beam_size=1"' in capsys.readouterr().out
