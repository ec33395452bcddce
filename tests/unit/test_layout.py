"""The installed layout: every package ships, under the distinctive `mmserve.` prefix."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("server", "plugins", "registry")


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        "mmserve." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).rglob("__init__.py")
        if "weights" not in init.parts
    }
    assert on_disk - listed == set(), f"package folders missing from [tool.setuptools] packages: {on_disk - listed}"
    assert listed - on_disk == set(), f"listed packages with no folder: {listed - on_disk}"
    assert config["package-dir"] == {f"mmserve.{top}": top for top in TOP_LEVEL}


def test_console_script_and_entry_points_use_the_mmserve_names() -> None:
    dist = metadata.distribution("mmserve")
    targets = {ep.group: ep.value for ep in dist.entry_points}
    assert targets["console_scripts"] == "mmserve.server.cli:main"
    mmserve_points = [ep.value for ep in dist.entry_points if ep.group == "mmserve"]
    assert mmserve_points and all(value.startswith("mmserve.plugins.") for value in mmserve_points)


def test_server_settings_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mmserve.server.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "False", "mmserve.server.settings pulls in torch"
