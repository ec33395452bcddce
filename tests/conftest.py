"""Shared fixtures: settings on a temporary data directory, the example plugins on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ECHO_SRC = ROOT / "examples" / "mmserve-echo" / "src"
ECHO_MODULE = "mmserve_echo.plugin"
FORECAST_SRC = ROOT / "examples" / "mmserve-forecast" / "src"

for src in (ECHO_SRC, FORECAST_SRC):
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """One MLflow store for the whole session: creating a sqlite store takes seconds."""
    return tmp_path_factory.mktemp("mmserve-data")


@pytest.fixture
def echo_settings(shared_data_dir):
    from mmserve.server.settings import Settings

    return Settings(data_dir=shared_data_dir, plugins=["none"], plugin_modules=[ECHO_MODULE])
