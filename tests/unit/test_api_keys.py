"""Optional API keys: off by default, Bearer or X-API-Key, constant-time, exempt paths, never logged."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from mmserve.server.http import auth
from mmserve.server.http.app import create_app
from mmserve.server.http.auth import ApiKeyAuth, ApiKeyConfigError, load_api_keys
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

KEY = "k-3f9a1c77e2d04b5e"
FILE_KEY = "file-key-8d21f0aa"
TEXT = {"content-type": "text/plain"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# rotated monthly\n\n{FILE_KEY}\n")
    return path


@pytest.fixture(scope="module")
def client(shared_data_dir, key_file):
    settings = Settings(
        data_dir=shared_data_dir, plugins=["none"], plugin_modules=[ECHO_MODULE], api_keys=[KEY], api_keys_file=key_file
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_request_without_a_key_gets_401_naming_the_scheme(client):
    response = client.post("/v1/echo", content=b"ab", headers=TEXT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="mmserve"'
    assert "Authorization: Bearer" in response.json()["error"] and "X-API-Key" in response.json()["error"]
    wrong = client.post("/v1/echo", content=b"ab", headers={**TEXT, "Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = client.post("/v1/echo", content=b"ab", headers={**TEXT, "Authorization": f"Basic {KEY}"})
    assert basic.status_code == 401


def test_bearer_and_x_api_key_from_settings_or_file_are_accepted(client):
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"authorization": f"bearer {FILE_KEY}"}):
        response = client.post("/v1/echo", content=b"ab", headers={**TEXT, **headers})
        assert response.status_code == 200, headers
        assert response.json()["text"] == "AB"
    v2 = client.get("/v2/models/echo", headers={"X-API-Key": FILE_KEY})
    assert v2.status_code == 200


def test_health_metrics_and_docs_stay_open(client):
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
    assert client.get("/v2").status_code == 401
    assert client.get("/v1/tasks").status_code == 401


def test_openapi_declares_the_security_schemes_and_401(client):
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    task = doc["paths"]["/v1/echo"]["post"]
    assert task["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert "401" in task["responses"]
    live = doc["paths"]["/v2/health/live"]["get"]
    assert "security" not in live and "401" not in live["responses"]


def test_keys_never_reach_logs_or_settings_repr(shared_data_dir, client, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/v1/echo", content=b"ab", headers={**TEXT, "Authorization": f"Bearer {KEY}"})
    client.post("/v1/echo", content=b"ab", headers={**TEXT, "X-API-Key": KEY + "x"})
    assert KEY not in caplog.text
    settings = Settings(data_dir=shared_data_dir, api_keys=[KEY])
    assert KEY not in repr(settings) and KEY not in str(settings)


def test_keys_come_from_the_environment_split_on_commas(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSERVE_API_KEYS", f" {KEY} , {FILE_KEY},")
    assert load_api_keys(Settings(data_dir=tmp_path)) == [KEY, FILE_KEY]
    monkeypatch.delenv("MMSERVE_API_KEYS")
    assert load_api_keys(Settings(data_dir=tmp_path)) == []  # off by default


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), ("# only a comment\n\n", "holds no key"), ("short\n", "shorter than 8")],
)
def test_an_unusable_key_configuration_refuses_to_start(tmp_path, content, fragment):
    path = tmp_path / "keys.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ApiKeyConfigError, match=fragment):
        load_api_keys(Settings(data_dir=tmp_path, api_keys_file=path))


def test_every_key_is_compared_every_time(monkeypatch):
    # Constant time: no early exit on a match, and digests of equal length, whatever is sent.
    calls: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    middleware = ApiKeyAuth(app=None, keys=["first-key-0000", "second-key-000", "third-key-0000"])
    assert middleware.is_valid(b"first-key-0000")
    assert not middleware.is_valid(b"x" * 1000)
    assert len(calls) == 6 and set(calls) == {(32, 32)}


def test_the_openai_route_prefix_answers_in_openai_error_shape(client):
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
