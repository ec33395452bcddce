"""Weight averaging of artifacts (model soup): the mean of every float tensor, the first run's files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmserve.plugins.artifacts import read_weights, save_model_artifacts
from mmserve.plugins.average import main, write_average


def artifact(tmp_path, name: str, seed: int, width: int = 4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width))
    model.train()(torch.randn(5, 3))  # one forward: BatchNorm counts a batch
    return save_model_artifacts(tmp_path / name, {"task": "demo", "seed": seed}, model), model


def test_the_average_is_the_mean_of_every_float_tensor_and_keeps_the_first_runs_files(tmp_path):
    (a, model_a), (b, model_b) = artifact(tmp_path, "a", 0), artifact(tmp_path, "b", 1)
    (a / "vocab.json").write_text("[]")
    out = write_average([a, b], tmp_path / "soup")
    soup = read_weights(out)
    for name, tensor in model_a.state_dict().items():
        other = model_b.state_dict()[name]
        if tensor.is_floating_point():
            torch.testing.assert_close(soup[name], (tensor + other) / 2)
        else:
            assert torch.equal(soup[name], tensor)
    assert (out / "vocab.json").read_text() == "[]"
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["training"]["averaged_from"] == [str(a), str(b)]


def test_artifacts_of_other_architectures_are_refused(tmp_path):
    (a, _), (b, _) = artifact(tmp_path, "a", 0), artifact(tmp_path, "b", 1, width=5)
    with pytest.raises(AssertionError, match="shapes differ"):
        write_average([a, b], tmp_path / "soup")
    with pytest.raises(AssertionError, match="at least two"):
        main(["--out", str(tmp_path / "soup"), str(a)])
