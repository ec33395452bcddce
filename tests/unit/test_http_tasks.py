"""`POST /v1/<task>` through the real app (in-process), with the echo plugin."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

TEXT = {"content-type": "text/plain"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("http-data"),
        plugins=["none"],
        plugin_modules=[ECHO_MODULE, "tests.fixtures.unloadable_model_plugin", "tests.fixtures.options_plugin"],
        max_upload_bytes=8192,  # above the echo task's own limit (4096), so that limit answers first
        max_output_length=64,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_raw_multipart_and_json_bodies(client):
    assert client.post("/v1/echo", content=b"raw body", headers=TEXT).json()["text"] == "RAW BODY"
    multipart = client.post("/v1/echo", files={"file": ("a.txt", b"multi part", "text/plain")})
    assert multipart.json()["text"] == "MULTI PART"
    as_json = client.post("/v1/echo", json={"data": "anNvbg==", "content_type": "text/plain"})
    assert as_json.json()["text"] == "JSON"
    assert as_json.json()["model"] == {"name": "echo", "version": "1"}


def test_parameters_from_query_form_and_json(client):
    assert client.post("/v1/echo?max_length=2", content=b"abcdef", headers=TEXT).json()["text"] == "AB"
    form = client.post("/v1/echo", files={"file": ("a.txt", b"abcdef", "text/plain")}, data={"max_length": "3"})
    assert form.json()["text"] == "ABC"
    assert client.post("/v1/echo", json={"data": "YWJjZGVm", "max_length": 4}).json()["text"] == "ABCD"
    beam = client.post("/v1/echo", json={"data": "YWJj", "beam_size": 3, "length_penalty": 0.6}).json()
    assert beam["text"] == "ABC"


def test_attention_is_returned_on_request(client):
    out = client.post("/v1/echo?attention=true", content=b"ab", headers=TEXT).json()
    assert out["attention"] == [[1.0, 0.0], [0.0, 1.0]]
    assert "attention" not in client.post("/v1/echo", content=b"ab", headers=TEXT).json()


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("beam_size=0", "beam_size"),
        ("beam_size=99", "over the limit"),
        ("max_length=1000", "over the limit of 64"),
        ("top_p=0", "top_p"),
        ("temperature=-1", "temperature"),
        ("beam_size=2&temperature=1", "cannot be combined"),
        ("max_length=abc", "max_length"),
        ("colour=red", "unknown parameter"),
    ],
)
def test_bad_parameters_are_422_naming_the_problem(client, query, fragment):
    response = client.post(f"/v1/echo?{query}", content=b"abc", headers=TEXT)
    assert response.status_code == 422
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b"", "headers": TEXT}, 400, "empty input"),
        ({"content": b"\xff\xfe", "headers": TEXT}, 400, "UTF-8"),
        ({"content": b"abc", "headers": {"content-type": "image/gif"}}, 415, "image/gif"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"data": "@@@"}}, 400, "base64"),
        ({"json": {"text": "x"}}, 400, "'data'"),
        ({"files": {"upload": ("a.txt", b"abc", "text/plain")}}, 400, "'file'"),
        ({"content": b"x" * 5_000, "headers": TEXT}, 413, "over the echo limit"),
        ({"content": b"x" * 100_000, "headers": TEXT}, 413, "over the limit of"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, kwargs, status, fragment):
    response = client.post("/v1/echo", **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_chunked_upload_over_the_limit_is_413(client):
    def chunks():
        for _ in range(10):
            yield b"y" * 10240

    response = client.post("/v1/echo", content=chunks(), headers=TEXT)
    assert response.status_code == 413


def test_unknown_task_is_404(client):
    response = client.post("/v1/nope", content=b"abc", headers=TEXT)
    assert response.status_code == 404 and "error" in response.json()


def test_a_task_whose_model_failed_answers_503_and_others_serve(client):
    response = client.post("/v1/unloadable", content=b"abc", headers=TEXT)
    assert response.status_code == 503
    assert "weights are corrupt" in response.json()["error"]
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert tasks["unloadable"]["status"] == "failed" and tasks["echo"]["status"] == "ready"


def test_streaming_sends_one_event_per_token_then_the_result(client):
    with client.stream("POST", "/v1/echo?stream=true", content=b"sse!", headers=TEXT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [block for block in body.strip().split("\n\n")]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names == ["token"] * 4 + ["result"]
    tokens = [json.loads(e.split("\n")[1].removeprefix("data: "))["token"] for e in events[:-1]]
    assert "".join(tokens) == "SSE!"
    assert json.loads(events[-1].split("\n")[1].removeprefix("data: "))["text"] == "SSE!"


def test_stream_rejects_beam_search(client):
    response = client.post("/v1/echo?stream=true&beam_size=2", content=b"abc", headers=TEXT)
    assert response.status_code == 422


def test_metrics_count_requests_by_status(client):
    client.post("/v1/echo", content=b"count me", headers=TEXT)
    client.post("/v1/echo?beam_size=0", content=b"abc", headers=TEXT)
    text = client.get("/metrics").text
    assert 'mmserve_requests_total{endpoint="v1",status="200",task="echo"}' in text
    assert 'mmserve_requests_total{endpoint="v1",status="422",task="echo"}' in text
    assert "mmserve_request_latency_seconds_bucket" in text
    assert "mmserve_decode_batch_size_bucket" in text


def test_openapi_documents_task_endpoints(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/echo"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "text/plain"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_compressed_bodies_are_inflated(client):
    import gzip

    response = client.post("/v1/echo", content=gzip.compress(b"zipped"), headers={**TEXT, "content-encoding": "gzip"})
    assert response.json()["text"] == "ZIPPED"
    bad = client.post("/v1/echo", content=b"not gzip", headers={**TEXT, "content-encoding": "gzip"})
    assert bad.status_code == 400 and "gzip" in bad.json()["error"]
    unknown = client.post("/v1/echo", content=b"x", headers={**TEXT, "content-encoding": "br"})
    assert unknown.status_code == 415


def test_overload_is_counted_as_503(tmp_path):
    settings = Settings(data_dir=tmp_path, plugins=["none"], plugin_modules=[ECHO_MODULE])
    app = create_app(settings)
    with TestClient(app) as local:
        engine = app.state.runtime.services["echo"].engine
        engine.stop()  # a stopped engine refuses new work, like a shed request
        response = local.post("/v1/echo", content=b"abc", headers=TEXT)
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert 'status="503"' in local.get("/metrics").text


def test_request_over_the_deadline_is_504_and_frees_its_slot(tmp_path):
    import time

    settings = Settings(
        data_dir=tmp_path, plugins=["none"], plugin_modules=[ECHO_MODULE], request_timeout_s=0.05, max_output_length=4096
    )
    app = create_app(settings)
    with TestClient(app) as local:
        response = local.post("/v1/echo?max_length=4000", content=b"x" * 4000, headers=TEXT)
        assert response.status_code == 504 and "did not answer within" in response.json()["error"]
        engine = app.state.runtime.services["echo"].engine
        deadline = time.monotonic() + 5
        while engine.active_sequences and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active_sequences == 0


def test_task_options_reach_preprocess_and_postprocess(client):
    answer = client.post("/v1/repeat?repeat=3&suffix=!", content=b"ab", headers=TEXT)
    assert answer.status_code == 200 and answer.json()["text"] == "ABABAB!"
    as_json = client.post("/v1/repeat", json={"data": "eHk=", "content_type": "text/plain", "repeat": 2})
    assert as_json.json()["text"] == "XYXY"


def test_bad_or_foreign_task_options_are_422_naming_them(client):
    too_many = client.post("/v1/repeat?repeat=9", content=b"ab", headers=TEXT)
    assert too_many.status_code == 422 and "repeat" in too_many.json()["error"]
    other_task = client.post("/v1/echo?repeat=2", content=b"ab", headers=TEXT)
    assert other_task.status_code == 422 and "unknown parameter" in other_task.json()["error"]


def test_small_multipart_uploads_are_parsed_without_temp_files(client, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where any temp file would land
    answer = client.post("/v1/echo", files={"file": ("a.txt", b"in memory", "text/plain")})
    assert answer.json()["text"] == "IN MEMORY"
    assert list(tmp_path.iterdir()) == [], "a small upload went through a temporary file"
