"""The served music model: continuation and harmonisation rows share decode batches and each
decodes exactly as its own model alone; mode=score returns the evaluation's exact NLL;
mode=harmonize writes voices under every melody step."""

from __future__ import annotations

import json

import pytest
import torch

from mmserve.plugins.errors import InputError
from mmserve.plugins.music.checkpoint import save_music_model
from mmserve.plugins.music.evaluate import nll_per_step
from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.preprocess import MusicOptions
from mmserve.plugins.music.served import ServedMusic
from mmserve.plugins.music.task import HARMONY_DIR, MusicTask
from mmserve.plugins.music.tokens import piece_to_roll
from mmserve.plugins.music.train import build_model, resolve_settings
from mmserve.plugins.nn.decoding import DecodeParams
from mmserve.plugins.nn.search import decode
from mmserve.plugins.task import InputLimits, Prepared

from .conftest import TINY, tiny_model

TASK = MusicTask()
MELODY = [[67], [67], [69], [71], [72], [72], [71], [69]]


def _harmony_model() -> MusicModel:
    # Other widths and another attention than the continuation model: the packing must cope.
    torch.manual_seed(3)
    model = build_model(resolve_settings({**TINY, "memory_dim": 10, "attn_dim": 6, "attention": "location"}))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    model.trained_for = "harmony"
    return model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedMusic:
    directory = tmp_path_factory.mktemp("music-both")
    save_music_model(tiny_model(), directory, {"data": "quarter"})
    save_music_model(_harmony_model(), directory / HARMONY_DIR, {"data": "harmony"})
    model = TASK.load_model(directory, torch.device("cpu"))
    assert isinstance(model, ServedMusic) and model.routes == ["quarter", "harmony"]
    return model


def _run(model, items: list, seed: int = 11) -> list:
    memory = model.encode(model.collate(items))
    return decode(model, memory, DecodeParams(max_length=400, temperature=1.0, seed=seed))


def test_mixed_routes_decode_exactly_as_each_model_alone(served: ServedMusic) -> None:
    primer = piece_to_roll([[60, 64, 67]])
    melody = piece_to_roll(MELODY)
    mixed = _run(served, [(primer, 5), (melody, len(MELODY), "harmony"), (torch.zeros(0, 88), 3)])
    alone_quarter = _run(served.model("quarter"), [(primer, 5), (torch.zeros(0, 88), 3)])
    alone_harmony = _run(served.model("harmony"), [(melody, len(MELODY))])
    assert [r.tokens for r in mixed] == [alone_quarter[0].tokens, alone_harmony[0].tokens, alone_quarter[1].tokens]
    assert mixed[1].score == pytest.approx(alone_harmony[0].score, abs=1e-4)
    assert all(r.finished for r in mixed)


def test_score_is_the_evaluations_exact_nll(served: ServedMusic) -> None:
    piece = [[60, 64, 67], [62, 65, 69], [], [59, 62, 67, 74]]
    options = MusicOptions(mode="score")
    prepared = TASK.preprocess(json.dumps(piece).encode(), "application/json", served, InputLimits(), options=options)
    assert isinstance(prepared, Prepared)
    (result,) = _run(served, [prepared.inputs])
    assert result.tokens == [] and result.finished  # the engine only ends the row
    out = TASK.postprocess(result, served, False, options=options, context=prepared.context)
    expected = nll_per_step(served.model("quarter"), [piece])
    assert out["num_steps"] == 4
    assert out["nll_per_step"] == pytest.approx(expected, rel=1e-6)
    assert out["nll"] == pytest.approx(expected * 4, rel=1e-6)
    assert sum(out["step_nll"]) == pytest.approx(out["nll"], rel=1e-9)
    assert all(v > 0 for v in out["step_nll"])


def test_harmonize_writes_voices_under_every_melody_step(served: ServedMusic) -> None:
    options = MusicOptions(mode="harmonize")
    prepared = TASK.preprocess(json.dumps(MELODY).encode(), "application/json", served, InputLimits(), options=options)
    (result,) = _run(served, [prepared.inputs])
    out = TASK.postprocess(result, served, False, options=options, context=prepared.context)
    assert out["num_steps"] == len(MELODY) and out["finished"]
    assert out["seconds_per_step"] == pytest.approx(60.0 / 100.0 / 4)  # 16th notes
    for step, melody in zip(out["steps"], MELODY):
        assert step["melody"] == melody and set(melody) <= set(step["notes"])


def test_a_mode_without_its_model_is_a_422() -> None:
    only_harmony = ServedMusic({"harmony": _harmony_model()})
    for mode in ("continue", "score"):
        with pytest.raises(InputError, match="continuation model") as error:
            TASK.preprocess(b"[[60]]", "application/json", only_harmony, InputLimits(), options=MusicOptions(mode=mode))
        assert error.value.status_code == 422
    with pytest.raises(InputError, match="needs a piece with notes"):
        TASK.preprocess(b"[[], []]", "application/json", ServedMusic({"quarter": tiny_model()}), InputLimits(),
                        options=MusicOptions(mode="score"))  # fmt: skip
