"""JSON bodies within limits: nesting depth measured before parsing, size capped, 4xx naming each."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.http.json_limits import InvalidJson, JsonLimitError, JsonLimits, load_json, nesting_depth
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

LIMITS = JsonLimits(max_bytes=10_000, max_depth=8)


def _reference_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    return 0


def _random_value(rng: random.Random, depth: int):
    # Strings full of brackets, quotes and backslashes: the scan must not count them.
    kind = rng.choice(["list", "dict", "str", "num"] if depth < 12 else ["str", "num"])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {rng.choice(["a", "[", '"}', "\\"]): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if kind == "str":
        return "".join(rng.choice('[]{}"\\ab\n') for _ in range(rng.randint(0, 6)))
    return rng.random()


def test_nesting_depth_matches_a_recursive_count_on_random_json():
    rng = random.Random(12)
    for _ in range(300):
        value = _random_value(rng, 0)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert nesting_depth(text) == _reference_depth(value), text


def test_depth_and_size_limits_name_the_problem():
    with pytest.raises(JsonLimitError, match="nested 9 levels deep, over the limit of 8") as deep:
        load_json(b"[" * 9 + b"]" * 9, LIMITS)
    assert deep.value.status_code == 400
    with pytest.raises(JsonLimitError, match="over the limit of 10000 bytes") as big:
        load_json(b'"' + b"a" * 10_000 + b'"', LIMITS)
    assert big.value.status_code == 413
    with pytest.raises(InvalidJson, match="not valid JSON"):
        load_json(b"{", LIMITS)
    assert load_json(b'{"a": ["[[[[[[[[[[[["]}', LIMITS) == {"a": ["[[[[[[[[[[[["]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("json-limits"),
        plugins=["none"],
        plugin_modules=[ECHO_MODULE],
        max_json_depth=16,
        max_json_bytes=20_000,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


JSON = {"content-type": "application/json"}
DEEP = b'{"data": "YWI=", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def test_task_route_refuses_deep_and_oversized_json_then_still_serves(client):
    deep = client.post("/v1/echo", content=DEEP, headers=JSON)
    assert deep.status_code == 400
    assert "nested 5001 levels deep, over the limit of 16" in deep.json()["error"]
    big = client.post("/v1/echo", json={"data": "YWJj" * 6000})
    assert big.status_code == 413 and "over the limit of 20000 bytes" in big.json()["error"]
    assert client.post("/v1/echo", json={"data": "YWJj"}).json()["text"] == "ABC"


def test_v2_infer_refuses_deep_and_oversized_json(client):
    deep = client.post("/v2/models/echo/infer", content=b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert deep.status_code == 400 and "over the limit of 16" in deep.json()["error"]
    big = client.post("/v2/models/echo/infer", content=json.dumps({"id": "x" * 25_000, "inputs": []}).encode())
    assert big.status_code == 413 and "over the limit of 20000 bytes" in big.json()["error"]
    ok = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["ab"]}]}
    assert client.post("/v2/models/echo/infer", json=ok).status_code == 200


def test_compressed_json_is_held_to_the_same_limits(client):
    import gzip

    deep = client.post("/v1/echo", content=gzip.compress(DEEP), headers={**JSON, "content-encoding": "gzip"})
    assert deep.status_code == 400 and "levels deep" in deep.json()["error"]
