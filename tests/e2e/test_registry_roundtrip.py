"""Train a few steps → register → alias → the server serves that version (MLflow end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.e2e.server_process import ROOT, running_server

pytestmark = pytest.mark.e2e

TINY = ["--set", "train_scenes=64", "--set", "val_scenes=16", "--set", "test_scenes=16", "--set", "attention_plots=1"]


def _run_cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMSERVE_DATA_DIR": str(data_dir), "MMSERVE_PLUGINS": "captioning", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mmserve.server", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _cli(data_dir, *args: str) -> str:
    done = _run_cli(data_dir, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _served_version(base: str) -> str:
    tasks = httpx.get(f"{base}/v1/tasks", timeout=10).json()["tasks"]
    return next(t for t in tasks if t["name"] == "captioning")["model"]["version"]


def test_train_register_alias_serve(tmp_path):
    # First start registers the bundled weights as version 1 @production.
    with running_server(tmp_path, env={"MMSERVE_PLUGINS": "captioning"}) as base:
        assert _served_version(base) == "1"

    trained = json.loads(_cli(tmp_path, "train", "captioning", "--epochs", "1", "--max-steps", "3", "--alias", "staging", *TINY))
    assert trained["version"] == "2" and trained["alias"] == "staging"
    assert "test_bleu_4" in trained["metrics"]

    models = json.loads(_cli(tmp_path, "models", "--json"))
    versions = {v["version"]: v["aliases"] for v in models[0]["versions"]}
    assert versions == {"1": ["production"], "2": ["staging"]}

    # The training run holds per-epoch metrics, sample captions and attention plots.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = next(v["run_id"] for v in models[0]["versions"] if v["version"] == "2")
    run = client.get_run(run_id)
    assert {"train_loss", "val_loss"} <= set(run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    nested = [a.path for d in artifacts for a in client.list_artifacts(run_id, d)] + artifacts
    assert any(p.endswith(".png") for p in nested), nested
    assert "model" in artifacts

    with running_server(tmp_path, env={"MMSERVE_PLUGINS": "captioning", "MMSERVE_TASKS__CAPTIONING__ALIAS": "staging"}) as base:
        assert _served_version(base) == "2"
        scene = httpx.post(f"{base}/v1/captioning", files={"file": ("s.png", _scene_png(), "image/png")}, timeout=30)
        assert scene.status_code == 200 and scene.json()["model"]["version"] == "2"

    _cli(tmp_path, "alias", "captioning", "production", "2")
    with running_server(tmp_path, env={"MMSERVE_PLUGINS": "captioning"}) as base:
        assert _served_version(base) == "2"


def _scene_png() -> bytes:
    from mmserve.plugins.captioning.data import make_example

    return make_example(0).png


def test_plugins_command_lists_versions(tmp_path):
    out = _cli(tmp_path, "plugins")
    assert "captioning" in out and "entry point mmserve.plugins.captioning.plugin" in out


def test_register_adds_a_weights_directory_as_a_version(tmp_path, monkeypatch, capsys):
    # What an upgrade needs: a data directory already serving version 1 takes newer weights
    # (here the bundled ones again) as version 2, aliased, without training.
    with running_server(tmp_path, env={"MMSERVE_PLUGINS": "captioning"}) as base:
        assert _served_version(base) == "1"
    weights = ROOT / "plugins" / "captioning" / "weights"
    registered = json.loads(_cli(tmp_path, "register", "captioning", str(weights), "--alias", "production"))
    assert registered == {"task": "captioning", "version": "2", "alias": "production", "model_dir": str(weights)}
    models = json.loads(_cli(tmp_path, "models", "--json"))
    assert {v["version"]: v["aliases"] for v in models[0]["versions"]} == {"1": [], "2": ["production"]}
    with running_server(tmp_path, env={"MMSERVE_PLUGINS": "captioning"}) as base:
        assert _served_version(base) == "2"

    # A directory the task cannot load is refused by name, and nothing is registered. These
    # run in-process: the refusals need no server, and a CLI subprocess costs seconds each.
    from mmserve.server.cli import main

    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMSERVE_PLUGINS", "captioning")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="is not a loadable captioning model"):
        main(["register", "captioning", str(broken)])
    with pytest.raises(SystemExit, match="unknown task 'nosuchtask'"):
        main(["register", "nosuchtask", str(weights)])
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["versions"]) == 2
