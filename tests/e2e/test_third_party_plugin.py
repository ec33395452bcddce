"""Installing a plugin package adds its endpoints with no change to the core."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.e2e.server_process import ROOT, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed_echo(tmp_path_factory):
    """pip-install examples/mmserve-echo into a private target directory (not the venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT / "examples" / "mmserve-echo")],
        check=True,
    )
    assert any(p.name.startswith("mmserve_echo") and p.name.endswith(".dist-info") for p in target.iterdir())
    return target


def test_installed_plugin_is_discovered_through_its_entry_point(installed_echo, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(installed_echo)])}
    listing = subprocess.run(
        [sys.executable, "-m", "mmserve.server", "plugins", "--json"],
        cwd=ROOT, env={**os.environ, **env, "MMSERVE_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, check=True,
    )
    assert '"echo"' in listing.stdout and "entry point mmserve_echo.plugin" in listing.stdout


def test_installed_plugin_serves_its_endpoint(installed_echo, tmp_path):
    # Only the entry point named "echo" is allowed: the server runs the installed package alone.
    env = {"MMSERVE_PLUGINS": "echo"}
    with running_server(tmp_path, env=env, extra_path=[installed_echo], include_examples=False) as base:
        response = httpx.post(f"{base}/v1/echo", content=b"installed", headers={"content-type": "text/plain"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == "INSTALLED"
        tasks = httpx.get(f"{base}/v1/tasks", timeout=10).json()
        assert [t["name"] for t in tasks["tasks"]] == ["echo"]
        assert tasks["plugins"][0]["source"].startswith("entry point mmserve_echo.plugin")
