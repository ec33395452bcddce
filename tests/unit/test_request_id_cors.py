"""X-Request-ID echoed (or made) on every answer and logged; CORS for configured origins only."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

KEY = "cors-test-key-123"
ORIGIN = "https://app.example"
TEXT = {"content-type": "text/plain", "Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(shared_data_dir):
    settings = Settings(
        data_dir=shared_data_dir,
        plugins=["none"],
        plugin_modules=[ECHO_MODULE],
        api_keys=[KEY],
        cors_allow_origins=[ORIGIN],
        max_upload_bytes=1024,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_sane_client_id_is_echoed_and_others_are_replaced(client):
    assert client.post("/v1/echo", content=b"ab", headers={**TEXT, "X-Request-ID": "job-42:a.b_c"}).headers[
        "x-request-id"
    ] == "job-42:a.b_c"
    made = client.post("/v1/echo", content=b"ab", headers=TEXT).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for bad in ("x" * 129, "has space", "quote\"d"):
        replaced = client.post("/v1/echo", content=b"ab", headers={**TEXT, "X-Request-ID": bad})
        assert replaced.headers["x-request-id"] != bad and re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


def test_answers_made_before_any_route_carry_the_id_too(client):
    unauthorized = client.post("/v1/echo", content=b"ab", headers={"X-Request-ID": "no-key-1"})
    assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"] == "no-key-1"
    too_big = client.post("/v1/echo", content=b"a" * 100_000, headers={**TEXT, "X-Request-ID": "big-1"})
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big-1"


def test_client_errors_are_logged_with_the_id(client, caplog):
    caplog.set_level(logging.INFO, logger="mmserve.server.http.request_id")
    client.post("/v1/echo?beam_size=0", content=b"ab", headers={**TEXT, "X-Request-ID": "logged-7"})
    assert any("logged-7" in r.getMessage() and "422" in r.getMessage() for r in caplog.records)


def test_cors_preflight_for_an_allowed_origin_needs_no_key(client):
    preflight = client.options(
        "/v1/echo",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )  # fmt: skip
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    answer = client.post("/v1/echo", content=b"ab", headers={**TEXT, "Origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_cors_refuses_other_origins(client):
    preflight = client.options(
        "/v1/echo", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
    answer = client.post("/v1/echo", content=b"ab", headers={**TEXT, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in answer.headers
