"""Every corrupt-input case gets a 4xx naming the problem, and the server answers a valid request after it."""

from __future__ import annotations

import base64
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE
from tests.corpus.generate import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, Case, _image, build_cases

CASES = build_cases()
PNG = _image("PNG")
VALID = {  # one valid request per route the corpus hits
    "/v1/captioning": {"content": PNG, "headers": {"content-type": "image/png"}},
    "/v1/forecast": {"content": ",".join(str(i % 7) for i in range(40)).encode(), "headers": {"content-type": "text/csv"}},
    "/v2/models/echo/infer": {"json": {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]}},
    "/v2/models/captioning/infer": {"json": {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                                         "data": [base64.b64encode(PNG).decode()]}]}},
}  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("corpus"),
        plugins=["captioning"],
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
        return client.post(case.route, files={field: ("upload", case.body, content_type)})
    return client.post(case.route, content=case.body, headers=case.headers)


def test_the_corpus_covers_every_modality():
    counts = Counter(case.modality for case in CASES)
    assert counts["image"] >= 20 and counts["v2"] >= 15 and counts["series"] >= 5 and counts["json"] >= 5, counts


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corrupt_input_gets_a_4xx_naming_the_problem(client, case):
    response = _send(client, case)
    assert response.status_code in case.statuses, (response.status_code, response.text[:300])
    message = response.json()["error"]
    assert case.fragment in message.lower(), message
    valid = client.post(case.route, **VALID[case.route])
    assert valid.status_code == 200, f"a valid request after {case.name} failed: {valid.text[:300]}"
