"""The forecast example plugin served over HTTP: the Gaussian head end to end."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from tests.e2e.server_process import ROOT, running_server

pytestmark = pytest.mark.e2e

FORECAST_SRC = ROOT / "examples" / "mmserve-forecast" / "src"
CSV = {"content-type": "text/csv"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"MMSERVE_PLUGINS": "none", "MMSERVE_PLUGIN_MODULES": "mmserve_forecast.plugin"}
    data_dir = tmp_path_factory.mktemp("forecast-server")
    with running_server(data_dir, env=env, extra_path=[FORECAST_SRC], include_examples=False) as base:
        yield base


def sine(length: int = 64) -> list[float]:
    t = np.arange(length)
    return [round(float(v), 4) for v in 3.0 + 2.0 * np.sin(2 * np.pi * t / 12)]


def test_csv_body_gives_max_length_values(server) -> None:
    body = "value\n" + "\n".join(map(str, sine()))
    response = httpx.post(f"{server}/v1/forecast?max_length=12", content=body, headers=CSV, timeout=30)
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out["forecast"]) == 12 and out["horizon"] == 12
    assert all(np.isfinite(out["forecast"])) and np.isfinite(out["score"])
    # A clean period-12 sine: the forecast continues it (denormalised, in the series' units).
    truth = 3.0 + 2.0 * np.sin(2 * np.pi * np.arange(64, 76) / 12)
    assert np.abs(np.array(out["forecast"]) - truth).mean() < 1.0, out["forecast"]


def test_json_array_in_the_data_envelope_and_sampling(server) -> None:
    encoded = base64.b64encode(json.dumps(sine()).encode()).decode()
    request = {"data": encoded, "content_type": "application/json", "max_length": 8}
    mean = httpx.post(f"{server}/v1/forecast", json=request, timeout=30).json()["forecast"]
    again = httpx.post(f"{server}/v1/forecast", json=request, timeout=30).json()["forecast"]
    sampled = httpx.post(f"{server}/v1/forecast", json={**request, "temperature": 1.0}, timeout=30)
    assert sampled.status_code == 200, sampled.text
    assert mean == again and len(mean) == 8
    assert sampled.json()["forecast"] != mean


def test_stream_sends_each_value_as_a_token_event(server) -> None:
    url = f"{server}/v1/forecast?stream=true&max_length=6"
    with httpx.stream("POST", url, content=",".join(map(str, sine())), headers=CSV, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    blocks = [block.split("\n", 1) for block in body.strip().split("\n\n")]
    assert [event for event, _ in blocks] == ["event: token"] * 6 + ["event: result"]
    tokens = [json.loads(data.removeprefix("data: "))["token"] for _, data in blocks[:-1]]
    result = json.loads(blocks[-1][1].removeprefix("data: "))
    assert tokens == result["forecast"] and all(isinstance(t, float) for t in tokens)


def test_beam_search_is_refused_with_422(server) -> None:
    response = httpx.post(
        f"{server}/v1/forecast?beam_size=3", content=",".join(map(str, sine())), headers=CSV, timeout=30
    )
    assert response.status_code == 422, response.text
    assert "beam" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [("1,2,three," + "4," * 20, "not a number"), ("1,2,3", "at least"), ("nan," + "1," * 20, "finite")],
)
def test_bad_series_is_a_400_with_a_clear_message(server, body: str, message: str) -> None:
    response = httpx.post(f"{server}/v1/forecast", content=body, headers=CSV, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
