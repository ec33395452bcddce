"""The bundled demo weights: small, loadable, and actually able to read unseen handwriting."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.captioning.data import digit_words, make_example
from mmserve.plugins.captioning.evaluate import MAX_CAPTION_LENGTH
from mmserve.plugins.captioning.model import Captioner
from mmserve.plugins.captioning.task import CaptioningTask
from mmserve.plugins.nn.search import beam_search, greedy_decode
from mmserve.plugins.task import InputLimits

TASK = CaptioningTask()
SCENES = [make_example(i, split="test") for i in range(40)]  # handwriting never seen in training


@pytest.fixture(scope="module")
def model() -> Captioner:
    return TASK.load_model(TASK.bundled_artifacts(), torch.device("cpu"))


def _caption(model: Captioner, pngs: list[bytes], beam: int = 1) -> list[dict]:
    batch = model.collate([TASK.preprocess(png, "image/png", model, InputLimits()) for png in pngs])
    with torch.no_grad():
        memory = model.encode(batch)
        if beam == 1:
            results = greedy_decode(model, memory, MAX_CAPTION_LENGTH)
        else:
            results = beam_search(model, memory, beam, MAX_CAPTION_LENGTH)
    return [TASK.postprocess(r, model, include_attention=True) for r in results]


def test_bundled_artifacts_are_small_and_complete():
    directory = TASK.bundled_artifacts()
    files = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    assert {"config.json", "weights.safetensors", "vocab.json"} <= set(files)
    assert sum(files.values()) <= 8 * 1024 * 1024, files


def test_bundled_model_names_unseen_digits_in_order(model):
    outputs = _caption(model, [s.png for s in SCENES])
    correct = [digit_words(o["caption"]) == s.labels for o, s in zip(outputs, SCENES)]
    wrong = [(o["caption"], s.references[0]) for o, s, ok in zip(outputs, SCENES, correct) if not ok]
    # An untrained model names ~none of these correctly (see the next test).
    assert sum(correct) >= 36, wrong
    for out in outputs:
        assert [a["token"] for a in out["attention"]] == out["tokens"]
        for entry in out["attention"]:
            assert (len(entry["grid"]), len(entry["grid"][0])) == model.grid_size


def test_beam_search_agrees(model):
    outputs = _caption(model, [s.png for s in SCENES[:8]], beam=3)
    assert sum(digit_words(o["caption"]) == s.labels for o, s in zip(outputs, SCENES[:8])) >= 7


def test_an_untrained_model_fails_the_same_check(model):
    torch.manual_seed(0)
    untrained = Captioner(model.config, model.vocab).eval()
    outputs = _caption(untrained, [s.png for s in SCENES[:20]])
    assert sum(digit_words(o["caption"]) == s.labels for o, s in zip(outputs, SCENES[:20])) <= 3
