"""speech.tune's choice of decoding weights, clean val clips alone or clean and padded (--padded)."""

import json
from types import SimpleNamespace

import pytest

from mmserve.plugins.speech import tune
from mmserve.plugins.speech.features import FeatureConfig

TEXTS = ["one two three four", "five six seven eight"]
# Hypotheses per (val variant, CTC weight): on the clean clips w = 0 is best (1 error against
# 2 for w = 0.5); on the padded clips w = 0 falls apart (8 errors against 2).
HYPOTHESES = {
    ("clean", 0.0): ["one two three four", "five six seven ate"],
    ("clean", 0.5): ["one two tree four", "five six seven ate"],
    ("padded", 0.0): ["", "five"],
    ("padded", 0.5): ["one two tree four", "five six seven ate"],
}


class FakeParts:
    def __init__(self, name: str) -> None:
        self.features = name

    def join(self, hypotheses: list[str]) -> list[str]:
        return hypotheses


def run_tune(monkeypatch, tmp_path, *flags: str) -> float:
    model = SimpleNamespace(lm=None, config=SimpleNamespace(ctc_decode_weight=0.0, lm_weight=0.0, features=FeatureConfig()))
    monkeypatch.setattr(tune, "load_speech_model", lambda _: model)
    monkeypatch.setattr(tune, "val_parts", lambda *_: (FakeParts("clean"), TEXTS))
    monkeypatch.setattr(tune, "padded_val_parts", lambda *_: FakeParts("padded"))
    monkeypatch.setattr(tune, "transcribe", lambda m, features, beam_size: HYPOTHESES[features, m.config.ctc_decode_weight])
    (tmp_path / "config.json").write_text(json.dumps({"ctc_decode_weight": 0.3, "lm_weight": 0.0}))
    tune.main(["--model-dir", str(tmp_path), "--ctc-weights", "0", "0.5", "--lm-weights", "0", "--write", *flags])
    return json.loads((tmp_path / "config.json").read_text())["ctc_decode_weight"]


def test_clean_val_clips_alone_pick_the_lowest_clean_wer(monkeypatch, tmp_path):
    assert run_tune(monkeypatch, tmp_path) == 0.0


def test_padded_picks_the_lowest_mean_of_clean_and_padded_wer(monkeypatch, tmp_path):
    assert run_tune(monkeypatch, tmp_path, "--padded") == 0.5


def test_mean_rates_weighs_each_variant_the_same():
    assert tune.mean_rates([(0.2, 0.1), (0.4, 0.3)]) == pytest.approx((0.3, 0.2))
