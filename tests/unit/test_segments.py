"""Inputs that a task cuts into `Segments` (e.g. a long recording): every part decoded, side by
side, and one answer joined in order, in plain and streamed requests and through v2."""

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
    settings = Settings(data_dir=tmp_path_factory.mktemp("segments-data"), plugins=["none"],
                        plugin_modules=[ECHO_MODULE, "tests.fixtures.segmenting_plugin"])  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def test_parts_are_decoded_and_joined_in_order(client):
    out = client.post("/v1/parts", content=b"ab|cde|f", headers=TEXT).json()
    assert out["text"] == "AB CDE F" and out["parts"] == 3 and out["starts"] == [0.0, 3.0, 7.0]
    assert out["model"] == {"name": "parts", "version": "1"}
    single = client.post("/v1/parts", content=b"abc", headers=TEXT).json()
    assert single["text"] == "ABC" and "parts" not in single  # one piece: a plain input


def test_a_bad_part_is_the_requests_4xx(client):
    response = client.post("/v1/parts", content=b"ab||cd", headers=TEXT)
    assert response.status_code == 400 and "empty input" in response.json()["error"]


def test_streamed_parts_come_in_order_with_the_separator_between(client):
    with client.stream("POST", "/v1/parts?stream=true", content=b"ab|cd|efg", headers=TEXT) as response:
        body = response.read().decode()
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in body.strip().split("\n\n")]  # fmt: skip
    assert [name for name, _ in events] == ["token"] * 9 + ["result"]
    assert [payload["index"] for _, payload in events[:-1]] == list(range(9))
    assert "".join(payload["token"] for _, payload in events[:-1]) == "AB CD EFG"
    assert events[-1][1]["text"] == "AB CD EFG" and events[-1][1]["parts"] == 3


def test_v2_infer_joins_the_parts(client):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x|yz"]}]}
    out = client.post("/v2/models/parts/infer", json=body).json()
    text = next(o for o in out["outputs"] if o["name"] == "TEXT_OUT")["data"][0]
    assert text == "X YZ"


def test_metrics_count_the_parts_of_each_request(client):
    client.post("/v1/parts", content=b"a|b|c|d|e", headers=TEXT)
    client.post("/v1/parts", content=b"whole", headers=TEXT)
    text = client.get("/metrics").text
    assert 'mmserve_input_segments_bucket{le="1.0",task="parts"}' in text
    count = next(line for line in text.splitlines() if line.startswith('mmserve_input_segments_count{task="parts"}'))
    total = next(line for line in text.splitlines() if line.startswith('mmserve_input_segments_sum{task="parts"}'))
    assert float(count.split()[-1]) >= 2 and float(total.split()[-1]) >= 6  # 5 parts + 1 whole, at least
