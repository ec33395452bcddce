"""The bundled weights: small, loadable, and actually modelling chorales jointly per step."""

from __future__ import annotations

import torch

from mmserve.plugins.music.checkpoint import load_music_model, read_metrics
from mmserve.plugins.music.data import load_quarter
from mmserve.plugins.music.evaluate import BUNDLED_BERNOULLI, nll_per_step
from mmserve.plugins.music.task import MusicTask


def test_bundled_weights_are_small_and_score_valid_chorales_well() -> None:
    directory = MusicTask().bundled_artifacts()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024, f"bundled weights are {size} bytes"
    torch.set_num_threads(1)
    pieces = load_quarter()["valid"][:6]
    serial = nll_per_step(load_music_model(directory), pieces)
    bernoulli = nll_per_step(load_music_model(BUNDLED_BERNOULLI), pieces)
    # Untrained models score 15-60 nats per step; the joint head beats the independent one by far.
    assert serial < 7.0 and bernoulli < 11.0 and serial < bernoulli - 2.0, (serial, bernoulli)
    assert read_metrics(directory)["test_nll"] < 6.0


def test_bundled_harmonisation_model_is_served_and_writes_three_voices_under_a_melody() -> None:
    from mmserve.plugins.music.data import harmony_items, load_harmony
    from mmserve.plugins.music.evaluate import HARMONY_DIR, total_log_prob

    task = MusicTask()
    served = task.load_model(task.bundled_artifacts(), torch.device("cpu"))
    assert served.routes == ["quarter", "harmony"]
    torch.set_num_threads(1)
    chorales = load_harmony()["valid"][:3]
    total, steps = total_log_prob(load_music_model(task.bundled_artifacts() / HARMONY_DIR), harmony_items(chorales))
    # An untrained model scores ~11 nats per 16th-note step (epoch 0 of its run); the bundled one ~2.8 on valid.
    assert -total / steps < 4.5, -total / steps
    assert read_metrics(task.bundled_artifacts())["harmony_test_nll"] < 4.5
