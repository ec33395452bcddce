"""Metrics stored beside a model's weights: a new test evaluation replaces the old one's."""

from __future__ import annotations

from mmserve.plugins.artifacts import read_metrics, with_test_metrics, write_metrics


def test_a_new_evaluation_replaces_every_earlier_test_figure(tmp_path):
    write_metrics(tmp_path, {"val_cer": 0.15, "best_step": 13600, "test_wer": 0.34, "test_no_lm_wer": 0.40})
    stored = with_test_metrics(read_metrics(tmp_path), {"wer": 0.305, "test_cer": 0.143})
    # training's figures stay; the test figures are this evaluation's alone, each named test_*
    assert stored == {"val_cer": 0.15, "best_step": 13600.0, "test_wer": 0.305, "test_cer": 0.143}
    write_metrics(tmp_path, stored)
    assert read_metrics(tmp_path) == stored
