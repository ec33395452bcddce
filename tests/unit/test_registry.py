"""The MLflow model registry: register, alias, resolve, cache fallback, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmserve.registry.models import ModelNotFound, ModelRegistry


def _artifact(tmp_path: Path, marker: str) -> Path:
    directory = tmp_path / marker
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"marker": marker}))
    (directory / "weights.safetensors").write_bytes(b"not really weights")
    return directory


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("registry"))


def test_register_alias_resolve_round_trip(registry, tmp_path):
    v1 = registry.register("roundtrip", _artifact(tmp_path, "one"), alias="production")
    v2 = registry.register("roundtrip", _artifact(tmp_path, "two"))
    assert (v1, v2) == ("1", "2")
    resolved = registry.resolve("roundtrip", "production")
    assert resolved.version == "1" and not resolved.from_cache
    assert json.loads((resolved.path / "config.json").read_text()) == {"marker": "one"}
    registry.set_alias("roundtrip", "production", v2)
    resolved = registry.resolve("roundtrip", "production")
    assert json.loads((resolved.path / "config.json").read_text()) == {"marker": "two"}
    listing = {m["name"]: m for m in registry.list_models()}["roundtrip"]
    assert [(v["version"], v["aliases"]) for v in listing["versions"]] == [("1", []), ("2", ["production"])]


def test_bundled_weights_are_registered_once(registry, tmp_path):
    bundled = _artifact(tmp_path, "bundled")
    assert registry.ensure_bundled("bundled", bundled, "production") == "1"
    assert registry.ensure_bundled("bundled", bundled, "production") is None
    assert registry.resolve("bundled", "production").version == "1"


def test_cache_serves_when_mlflow_is_unreachable(registry, tmp_path):
    registry.register("offline", _artifact(tmp_path, "cached"), alias="production")
    registry.resolve("offline", "production")  # fills the cache
    unreachable = ModelRegistry(registry.data_dir, tracking_uri="http://127.0.0.1:9")
    resolved = unreachable.resolve("offline", "production")
    assert resolved.from_cache and resolved.version == "1"
    assert json.loads((resolved.path / "config.json").read_text()) == {"marker": "cached"}


def test_missing_model_is_a_clear_error(registry):
    with pytest.raises(ModelNotFound, match="nothing@production"):
        registry.resolve("nothing", "production")


def test_register_rejects_a_directory_without_config(registry, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        registry.register("bad", tmp_path)


def test_a_registered_version_carries_the_metrics_shipped_with_its_weights(registry, tmp_path):
    bundled = _artifact(tmp_path, "with-metrics")
    (bundled / "metrics.json").write_text(json.dumps({"test_bleu_4": 0.5, "test_accuracy": 0.75}))
    version = registry.ensure_bundled("scored", bundled, "production")
    model_version = registry.client.get_model_version("scored", version)
    run = registry.client.get_run(model_version.run_id)
    assert run.data.metrics == {"test_bleu_4": 0.5, "test_accuracy": 0.75}
    assert model_version.tags["metric.test_bleu_4"] == "0.5"
    assert model_version.tags["metric.test_accuracy"] == "0.75"


def test_registering_leaves_training_checkpoints_out_but_keeps_model_subfolders(registry, tmp_path):
    trained = _artifact(tmp_path, "trained")
    (trained / "checkpoints" / "step-400").mkdir(parents=True)
    (trained / "checkpoints" / "step-400" / "weights.safetensors").write_bytes(b"an earlier best")
    (trained / "harmony" / "checkpoints").mkdir(parents=True)  # a part of the model may use the name
    (trained / "harmony" / "checkpoints" / "note.txt").write_text("kept")
    registry.register("checkpointed", trained, alias="production")
    served = registry.resolve("checkpointed", "production").path
    assert not (served / "checkpoints").exists()
    assert (served / "harmony" / "checkpoints" / "note.txt").read_text() == "kept"
    assert json.loads((served / "config.json").read_text()) == {"marker": "trained"}
