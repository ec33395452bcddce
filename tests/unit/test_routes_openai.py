"""The OpenAI-compatible transcription route, in-process, with an echo task that transcribes
(the echo upper-cases its text input, so every answer is known exactly)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.http.routes_openai import _clock
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("openai-data"), plugins=["none"],
                        plugin_modules=[ECHO_MODULE, "tests.fixtures.transcribing_plugin"])  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _post(client, model="scribe", data=b"hello there", **fields):
    return client.post("/v1/audio/transcriptions", files={"file": ("a.txt", data, "text/plain")},
                       data={"model": model, **fields})  # fmt: skip


def test_json_text_and_the_whisper_alias(client):
    assert _post(client).json() == {"text": "HELLO THERE"}
    assert _post(client, "whisper-1", response_format="text").text == "HELLO THERE\n"


def test_subtitles_and_verbose_json(client):
    srt = _post(client, response_format="srt").text
    assert srt.startswith("1\n00:00:00,000 --> ") and "HELLO THERE" in srt
    vtt = _post(client, response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.headers["content-type"].startswith("text/vtt")
    verbose = _post(client, response_format="verbose_json", language="en").json()
    assert verbose["text"] == "HELLO THERE" and verbose["language"] == "en" and verbose["task"] == "transcribe"
    assert verbose["segments"][0]["text"] == "HELLO THERE"


def test_stream_gives_deltas_then_done(client):
    response = _post(client, data=b"abc", stream="true")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["delta"] for e in events[:-1]] == ["A", "B", "C"]
    assert events[-1] == {"type": "transcript.text.done", "text": "ABC"}


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": "nope"}, 404, "model"),
        ({"model": "echo"}, 404, "model"),  # served, but it does not transcribe
        ({"model": "scribe", "response_format": "xml"}, 400, "response_format"),
        ({"model": "scribe", "temperature": "hot"}, 400, "temperature"),
        ({"model": "scribe", "temperature": "3"}, 400, "temperature"),
        ({"model": "scribe", "timestamp_granularities[]": "frame"}, 400, "timestamp_granularities[]"),
    ],
)
def test_errors_use_the_openai_shape(client, fields, status, param):
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.txt", b"hi", "text/plain")}, data=fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_missing_file_and_task_errors(client):
    no_file = client.post("/v1/audio/transcriptions", data={"model": "scribe"})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    wrong_type = _post(client, data=b"\xff\xfe")  # the echo task rejects invalid UTF-8
    assert wrong_type.status_code == 400 and "error" in wrong_type.json()


def test_route_exists_only_when_a_task_transcribes(tmp_path):
    settings = Settings(data_dir=tmp_path, plugins=["none"], plugin_modules=[ECHO_MODULE])
    app = create_app(settings)
    assert "/v1/audio/transcriptions" not in {route.path for route in app.routes}


def test_subtitle_clock():
    assert _clock(3723.456, ",") == "01:02:03,456"
    assert _clock(0.0, ".") == "00:00:00.000"
