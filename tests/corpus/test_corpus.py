"""Every corrupt-input case gets a 4xx naming the problem, and the server answers a valid request after it."""

from __future__ import annotations

import base64
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from mmserve.plugins.music.midi import piece_to_midi_bytes
from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE
from tests.corpus.generate import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, Case, _image, build_cases
from tests.corpus.media_cases import video, wav

CASES = build_cases()
PNG = _image("PNG")
WAV = wav()
VALID = {  # one valid request per route the corpus hits
    "/v1/captioning": {"content": PNG, "headers": {"content-type": "image/png"}},
    "/v1/forecast": {"content": ",".join(str(i % 7) for i in range(40)).encode(), "headers": {"content-type": "text/csv"}},
    "/v2/models/echo/infer": {"json": {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]}},
    "/v2/models/captioning/infer": {"json": {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                                         "data": [base64.b64encode(PNG).decode()]}]}},
    "/v1/speech": {"content": WAV, "headers": {"content-type": "audio/wav"}},
    "/v1/audio/transcriptions": {"files": {"file": ("clip.wav", WAV, "audio/wav")}, "data": {"model": "whisper-1"}},
    "/v1/action": {"content": video(), "headers": {"content-type": "video/mp4"}},
    "/v1/music": {"content": piece_to_midi_bytes([[60, 64, 67], [62, 65, 69]], tempo=120),
                  "headers": {"content-type": "audio/midi"}, "params": {"length": 2}},
}  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("corpus"),
        plugins=["captioning", "speech", "action", "music"],
        plugin_modules=[ECHO_MODULE, "mmserve_forecast.plugin"],
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_json_bytes=MAX_JSON_BYTES,
        model_poll_interval_s=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _send(client: TestClient, case: Case):
    if case.multipart:
        (field, content_type), = case.multipart.items()
        return client.post(case.route, files={field: ("upload", case.body, content_type)}, data=case.fields)
    return client.post(case.route, content=case.body, headers=case.headers)


def test_the_corpus_covers_every_modality():
    counts = Counter(case.modality for case in CASES)
    assert counts["image"] >= 20 and counts["v2"] >= 15 and counts["series"] >= 5 and counts["json"] >= 5, counts
    assert counts["audio"] >= 20 and counts["video"] >= 15 and counts["midi"] >= 15, counts


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corrupt_input_gets_a_4xx_naming_the_problem(client, case):
    response = _send(client, case)
    assert response.status_code in case.statuses, (response.status_code, response.text[:300])
    message = response.json()["error"]
    if isinstance(message, dict):  # the OpenAI route's error object
        message = message["message"]
    assert case.fragment in message.lower(), message
    valid = client.post(case.route, **VALID[case.route])
    assert valid.status_code == 200, f"a valid request after {case.name} failed: {valid.text[:300]}"
