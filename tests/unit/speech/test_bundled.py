"""The bundled speech model: loads, stays small, carries its measured metrics, and gives
empty text for silence."""

from __future__ import annotations

import json

import numpy as np
import torch

from mmserve.plugins.nn.search import greedy_decode
from mmserve.plugins.speech.features import frames_for
from mmserve.plugins.speech.preprocess import featurize
from mmserve.plugins.speech.task import SpeechTask


def test_bundled_weights_load_small_with_metrics():
    task = SpeechTask()
    directory = task.bundled_artifacts()
    assert directory is not None, "plugins/speech/weights has no weights.safetensors"
    assert (directory / "weights.safetensors").stat().st_size <= 15 * 1024 * 1024
    metrics = json.loads((directory / "metrics.json").read_text())
    assert {"test_greedy_wer", "test_beam_wer", "test_greedy_cer", "test_beam_cer"} <= set(metrics)
    # ... and where its errors are: the test clips by what their voice holds that training never heard
    groups = ("new_accent", "new_variant", "new_accent_and_variant")
    assert sum(metrics[f"test_clips_{g}"] for g in groups) == metrics["test_clips"]
    assert all(f"test_{d}_{r}_{g}" in metrics for d in ("greedy", "beam") for r in ("wer", "cer") for g in groups)
    # ... and by what augmentation did to the recording
    conditions = ("clean", "noisy", "reverberant", "telephone")
    assert sum(metrics[f"test_clips_{c}"] for c in conditions) == metrics["test_clips"]
    assert all(f"test_{d}_wer_{c}" in metrics for d in ("greedy", "beam") for c in conditions)
    # ... and how it copes with silence around the speech and with long recordings cut in segments
    assert {"test_beam_wer_silence_padded", "test_beam_wer_long_form", "test_long_form_recordings",
            "test_beam_wer_two_sentences", "test_two_sentences_recordings"} <= set(metrics)  # fmt: skip
    model = task.load_model(directory, torch.device("cpu"))
    assert model.config.decoder.attention == "location"


def test_bundled_model_gives_silence_no_text():
    task = SpeechTask()
    model = task.load_model(task.bundled_artifacts(), torch.device("cpu"))
    features = featurize(torch.from_numpy(np.zeros(32000, np.float32)), model.config.features)
    assert features.shape[0] == frames_for(32000, model.config.features)
    with torch.no_grad():
        result = greedy_decode(model, model.encode(model.collate([features])), task.default_max_length)[0]
    assert task.postprocess(result, model, False)["text"] == ""
