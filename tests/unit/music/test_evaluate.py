"""Benchmark scoring: NLL per step, the logistic baseline, the table, and a training smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmserve.plugins.music.checkpoint import load_music_model
from mmserve.plugins.music.data import benchmark_items
from mmserve.plugins.music.evaluate import ANCHORS, benchmark_table, logistic_baseline, nll_per_step, total_log_prob
from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.train import train_music
from mmserve.plugins.task import TrainOptions
from mmserve.plugins.tracking import MemoryRunLogger

from .conftest import TINY

PIECES = [[[60, 64, 67], [62, 65], [60, 64, 67]], [[48, 55], [50], [48, 55], [50]]]


def test_nll_per_step_is_total_over_steps(serial_model: MusicModel) -> None:
    total, steps = total_log_prob(serial_model, benchmark_items(PIECES))
    assert steps == 7
    assert nll_per_step(serial_model, PIECES) == pytest.approx(-total / 7)
    one = [nll_per_step(serial_model, [p]) * len(p) for p in PIECES]
    assert nll_per_step(serial_model, PIECES) == pytest.approx(sum(one) / 7, rel=1e-5)  # batching changes nothing


def test_logistic_baseline_learns_an_alternation() -> None:
    # Steps alternate between two chords; one previous step predicts the next almost surely.
    train = [[[60, 64], [62, 65]] * 20]
    learned = logistic_baseline(train, train, l2=0.0)
    assert learned < 0.5
    # Never more than the all-units-at-chance cost (88 * log 2).
    assert logistic_baseline(train, [[[61], [70]]], l2=0.0) < 88 * 0.7


def test_table_lists_anchors_and_our_rows_sorted() -> None:
    table = benchmark_table({"test_nll": 5.4, "bernoulli_test_nll": 8.3, "logistic_test_nll": 9.03})
    lines = table.splitlines()[1:]
    values = [float(line.split()[-1]) for line in lines]
    assert values == sorted(values, reverse=True) and len(lines) == len(ANCHORS) + 3
    assert "RNN-NADE" in table and "5.400" in table


@pytest.mark.e2e
def test_training_smoke_writes_a_loadable_artifact_with_metrics(tmp_path: Path) -> None:
    logger = MemoryRunLogger()
    options = TrainOptions(output_dir=tmp_path, epochs=1, batch_size=16, max_steps=2, extra={**TINY, "progress": False})
    result = train_music(options, logger)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_nll"] == pytest.approx(result.metrics["val_nll"]) and metrics["val_nll"] > 0
    assert "training_curves.png" in logger.artifacts and logger.metrics
    model = load_music_model(tmp_path)
    assert isinstance(model, MusicModel) and not model.training
    assert torch.isfinite(torch.tensor(nll_per_step(model, PIECES)))
