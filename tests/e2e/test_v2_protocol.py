"""Open Inference Protocol v2 against a real server process, driven by the real tritonclient.

One server for the module: the echo plugin, plus a plugin module that does not exist, so the
readiness body has a failed plugin to report while echo still serves.
"""

from __future__ import annotations

import json
import re
import struct
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.server_process import running_server

pytestmark = pytest.mark.e2e

MISSING_PLUGIN = "mmserve_no_such_plugin"
TEXTS = ["hello", "a", "Mixed Case 123"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    env = {"MMSERVE_PLUGINS": "none", "MMSERVE_PLUGIN_MODULES": f"mmserve_echo.plugin,{MISSING_PLUGIN}"}
    with running_server(tmp_path_factory.mktemp("v2-e2e"), env) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    triton = httpclient.InferenceServerClient(url=urlparse(base_url).netloc, concurrency=2)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=30.0) as session:
        yield session


@pytest.fixture(scope="module")
def v1_scores(http) -> dict[str, float]:
    """Each text's score from the /v1 endpoint, one request at a time: the reference."""
    return {
        text: http.post("/v1/echo", content=text.encode(), headers={"content-type": "text/plain"}).json()["score"]
        for text in TEXTS
    }


def _text_input(texts: list[str], binary: bool, name: str = "TEXT") -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


# ----- health and metadata ---------------------------------------------------------------------


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mmserve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(client):
    metadata = client.get_model_metadata("echo")
    assert metadata["name"] == "echo"
    assert metadata["platform"] == "pytorch"
    assert metadata["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "TEXT_OUT", "datatype": "BYTES", "shape": [-1]},
        {"name": "SCORE", "datatype": "FP32", "shape": [-1]},
    ]
    (version,) = metadata["versions"]
    assert client.get_model_metadata("echo", model_version=version) == metadata


def test_unknown_model_and_version_metadata(client):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"
    version = client.get_model_metadata("echo")["versions"][0]
    with pytest.raises(InferenceServerException, match=f"served version is '{version}'") as info:
        client.get_model_metadata("echo", model_version="999")
    assert info.value.status() == "404"


def test_model_ready(client):
    version = client.get_model_metadata("echo")["versions"][0]
    assert client.is_model_ready("echo")
    assert client.is_model_ready("echo", model_version=version)
    assert not client.is_model_ready("echo", model_version="999")
    assert not client.is_model_ready("nope")


def test_ready_body_lists_tasks_and_failed_plugins(http):
    response = http.get("/v2/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert [(t["name"], t["status"], t["error"]) for t in body["tasks"]] == [("echo", "ready", None)]
    (failed,) = body["failed_plugins"]
    assert failed["name"] == MISSING_PLUGIN
    assert "ModuleNotFoundError" in failed["error"]


# ----- infer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_batch_infer(client, v1_scores, binary_in, binary_out):
    outputs = [
        httpclient.InferRequestedOutput("TEXT_OUT", binary_data=binary_out),
        httpclient.InferRequestedOutput("SCORE", binary_data=binary_out),
    ]
    result = client.infer("echo", [_text_input(TEXTS, binary_in)], outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["model_name"] == "echo"
    assert response["id"] == "req-7"
    for output in response["outputs"]:
        assert output["shape"] == [3]
        assert ("parameters" in output) == binary_out
    # tritonclient gives bytes for binary BYTES outputs and str for JSON ones.
    texts = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("TEXT_OUT")]
    assert texts == [t.upper() for t in TEXTS]
    scores = result.as_numpy("SCORE")
    assert scores.dtype == np.float32
    # Row i answers element i: each score equals that text's score when sent alone.
    np.testing.assert_allclose(scores, [v1_scores[t] for t in TEXTS], rtol=1e-5)


def test_infer_without_requested_outputs_returns_all_in_binary(client):
    result = client.infer("echo", [_text_input(["xyz"], binary=True)])
    assert {o["name"] for o in result.get_response()["outputs"]} == {"TEXT_OUT", "SCORE"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert result.as_numpy("TEXT_OUT").tolist() == [b"XYZ"]


def test_infer_one_requested_output_on_a_versioned_model(client):
    version = client.get_model_metadata("echo")["versions"][0]
    result = client.infer(
        "echo",
        [_text_input(["abc"], binary=False)],
        model_version=version,
        outputs=[httpclient.InferRequestedOutput("TEXT_OUT", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["TEXT_OUT"]
    assert result.as_numpy("SCORE") is None
    assert result.as_numpy("TEXT_OUT").tolist() == ["ABC"]


def test_request_parameters_reach_the_decoder(client):
    result = client.infer("echo", [_text_input(["hello", "abc"], binary=True)], parameters={"max_length": 2})
    assert result.as_numpy("TEXT_OUT").tolist() == [b"HE", b"AB"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(client, algorithm):
    result = client.infer(
        "echo",
        [_text_input(["squeeze me"], binary=True)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert result.as_numpy("TEXT_OUT").tolist() == [b"SQUEEZE ME"]


# ----- errors ------------------------------------------------------------------------------------


def test_unknown_model_infer(client):
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.infer("nope", [_text_input(["hi"], binary=True)])
    assert info.value.status() == "404"


def test_wrong_input_name(client):
    with pytest.raises(InferenceServerException, match="unknown input 'PROMPT'") as info:
        client.infer("echo", [_text_input(["hi"], binary=True, name="PROMPT")])
    assert info.value.status() == "400"
    assert "'TEXT'" in info.value.message()


def test_bad_element_in_a_batch_answers_for_the_whole_request(client):
    with pytest.raises(InferenceServerException, match="input 'TEXT' element 1: empty input") as info:
        client.infer("echo", [_text_input(["fine", "", "also fine"], binary=False)])
    assert info.value.status() == "400"


def test_bad_parameter(client):
    with pytest.raises(InferenceServerException, match="beam_size") as info:
        client.infer("echo", [_text_input(["hi"], binary=True)], parameters={"beam_size": 1000})
    assert info.value.status() == "422"


def _post_infer(http, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post("/v2/models/echo/infer", content=body, headers=headers or {})


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (json.dumps({"inputs": []}).encode(), {}, 400, "non-empty 'inputs'"),
        (
            json.dumps({"inputs": [{"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(),
            {},
            400,
            "datatype 'FP32'; it must be BYTES",
        ),
        (
            json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}).encode(),
            {},
            400,
            r"holds 1 elements but shape \[2\] needs 2",
        ),
        (
            json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "parameters": {"stream": True}}).encode(),
            {},
            422,
            "stream",
        ),
        (b"{}", {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    ],
)
def test_error_json_format(http, body, headers, status, message):
    response = _post_infer(http, body, headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]
    assert re.search(message, response.json()["error"])


def test_binary_body_without_header_length_is_explained(http):
    header = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]})
    response = _post_infer(http, header.encode() + struct.pack("<I", 2) + b"hi")
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_v2_requests_are_counted_in_metrics(http, client):
    client.infer("echo", [_text_input(["count me"], binary=True)])
    metrics = http.get("/metrics").text
    assert 'mmserve_requests_total{endpoint="v2",status="200",task="echo"}' in metrics
    assert 'task="nope"' not in metrics  # unknown model names never become labels


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and 'task="echo"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_batch_elements_share_encoder_batches(http, client):
    before = http.get("/metrics").text
    client.infer("echo", [_text_input(["one", "two", "three", "four"], binary=True)])
    after = http.get("/metrics").text
    batches = _metric(after, "mmserve_encode_batch_size_count") - _metric(before, "mmserve_encode_batch_size_count")
    inputs = _metric(after, "mmserve_encode_batch_size_sum") - _metric(before, "mmserve_encode_batch_size_sum")
    assert inputs == 4
    assert batches <= 2  # submitted together, so the engine encodes them together (usually as one)


def test_batch_longer_than_the_queue_is_refused_up_front(http):
    texts = [f"t{i}" for i in range(300)]  # the default max_queue is 256
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    response = http.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 413
    assert "split the request" in response.json()["error"]
