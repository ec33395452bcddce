"""Names that reach the filesystem (task, alias, version) are validated: no path traversal."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mmserve.registry.models import ModelRegistry, UnsafeName, safe_name
from mmserve.server.http.app import create_app
from mmserve.server.settings import Settings
from tests.conftest import ECHO_MODULE

TRAVERSALS = ["..", "../etc", "a/../../b", "/etc/passwd", "a\\b", ".hidden", "x" * 200, "", "a b", "ok\x00"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafeName, match="not allowed"):
        safe_name("task", name)


def test_plain_names_pass():
    for name in ("captioning", "echo", "v1.2_rc-3", "7"):
        assert safe_name("task", name) == name


def test_the_registry_refuses_traversal_before_touching_mlflow_or_disk(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(UnsafeName):
        registry.resolve("../../outside", "production")
    with pytest.raises(UnsafeName):
        registry.resolve("echo", "../production")
    assert registry._client is None, "MLflow was contacted for an unsafe name"
    assert not (tmp_path.parent / "outside").exists()


def test_a_tampered_alias_cache_cannot_point_outside(tmp_path):
    registry = ModelRegistry(tmp_path)
    task_dir = registry.cache_dir / "echo"
    task_dir.mkdir(parents=True)
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "config.json").write_text("{}")
    (task_dir / "aliases.json").write_text(json.dumps({"production": "../../escape"}))
    assert registry._cached_alias("echo", "production") is None


def test_http_model_names_with_traversal_are_404(shared_data_dir):
    settings = Settings(data_dir=shared_data_dir, plugins=["none"], plugin_modules=[ECHO_MODULE])
    with TestClient(create_app(settings)) as client:
        for path in ("/v2/models/..%2F..%2Fetc", "/v2/repository/models/..%2Fecho/load",
                     "/v2/models/echo/versions/..%2F..%2F1"):  # fmt: skip
            method = client.post if path.endswith("/load") else client.get
            response = method(path)
            assert response.status_code == 404, (path, response.status_code)
            assert "error" in response.json()
