"""The music task's request handling: inputs (MIDI, JSON, none), bad input statuses, and the
json / midi / png / wav answers, on a tiny model saved as an artifact."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pretty_midi
import pytest
import torch
from PIL import Image

from mmserve.plugins.errors import InputError
from mmserve.plugins.music.checkpoint import save_music_model
from mmserve.plugins.music.midi import piece_to_midi_bytes
from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.preprocess import MAX_INPUT_STEPS, MusicOptions
from mmserve.plugins.music.render import audio_missing
from mmserve.plugins.music.served import ServedMusic
from mmserve.plugins.music.task import MusicTask
from mmserve.plugins.nn.search import sample_decode
from mmserve.plugins.task import InputLimits

from .conftest import tiny_model

TASK = MusicTask()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> MusicModel:
    directory = tmp_path_factory.mktemp("music-artifact")
    save_music_model(tiny_model(), directory, {"data": "quarter"})
    return TASK.load_model(directory, torch.device("cpu"))


def _status(data: bytes, content_type: str | None, model: MusicModel, **options) -> int:
    with pytest.raises(InputError) as error:
        TASK.preprocess(data, content_type, model, InputLimits(), options=MusicOptions(**options))
    return error.value.status_code


def _generate(model: MusicModel, data: bytes, content_type: str | None, **options) -> dict:
    chosen = MusicOptions(**options)
    item = TASK.preprocess(data, content_type, model, InputLimits(), options=chosen)
    memory = model.encode(model.collate([item]))
    result = sample_decode(model, memory, 2000, 1.0, generator=torch.Generator().manual_seed(0))[0]
    return TASK.postprocess(result, model, False, options=chosen)


def test_inputs_midi_json_and_none_become_primer_rolls(model: MusicModel) -> None:
    piece = [[60, 64, 67], [62, 65]]
    midi_roll, steps = TASK.preprocess(piece_to_midi_bytes(piece), "audio/midi", model, InputLimits(), options=MusicOptions(length=9))
    json_roll, _ = TASK.preprocess(json.dumps({"notes": piece}).encode(), "application/json", model, InputLimits())
    plain_roll, _ = TASK.preprocess(json.dumps([[60, 64, 67], 62]).encode(), None, model, InputLimits())
    empty_roll, _ = TASK.preprocess(b"", None, model, InputLimits())
    assert steps == 9 and torch.equal(midi_roll, json_roll)
    assert plain_roll[1].nonzero().flatten().tolist() == [62 - 21]
    assert empty_roll.shape == (0, 88)


def test_bad_inputs_get_the_right_status(model: MusicModel) -> None:
    assert _status(b"MThd\x00\x00\x00\x06garbage", "audio/midi", model) == 400  # corrupt MIDI
    empty = pretty_midi.PrettyMIDI()
    buffer = io.BytesIO()
    empty.write(buffer)
    assert _status(buffer.getvalue(), "audio/midi", model) == 400  # no notes
    assert _status(b"[[60], [200]]", "application/json", model) == 422  # out of range
    assert _status(b"[[60], ['x']]", "application/json", model) == 400
    assert _status(b"{not json", "application/json", model) == 400
    assert _status(json.dumps([[60]] * (MAX_INPUT_STEPS + 1)).encode(), "application/json", model) == 413
    long_midi = piece_to_midi_bytes([[60 + (t % 2)] for t in range(MAX_INPUT_STEPS + 10)])
    assert _status(long_midi, "audio/midi", model) == 413
    assert _status(b"\x89PNG....", "image/png", model) == 415
    assert _status(b"[[60]]", "application/json", model, mode="harmonize") == 422  # a continuation model


def test_json_answer_has_the_requested_steps_with_times(model: MusicModel) -> None:
    out = _generate(model, b"[[60, 64, 67]]", "application/json", length=6, tempo=120.0)
    assert out["num_steps"] == 6 and out["finished"]
    assert [s["time"] for s in out["steps"]] == [0.5 * t for t in range(6)]
    assert all(all(21 <= p <= 108 for p in s["notes"]) and s["notes"] == sorted(s["notes"]) for s in out["steps"])


def test_midi_and_png_answers_parse_back(model: MusicModel) -> None:
    out = _generate(model, b"", None, length=5, format="midi")
    assert out["content_type"] == "audio/midi"
    midi = pretty_midi.PrettyMIDI(io.BytesIO(base64.b64decode(out["data"])))
    sounding = sorted({n.pitch for inst in midi.instruments for n in inst.notes})
    assert sounding == sorted({p for s in out["steps"] for p in s["notes"]})
    png = _generate(model, b"", None, length=5, format="png")
    assert Image.open(io.BytesIO(base64.b64decode(png["data"]))).format == "PNG"


def test_wav_answer_or_a_clear_missing_renderer_error(model: MusicModel) -> None:
    if audio_missing() is None:
        import soundfile

        out = _generate(model, b"[[60, 64, 67]]", None, length=4, format="wav", tempo=120.0)
        audio, rate = soundfile.read(io.BytesIO(base64.b64decode(out["data"])))
        assert rate > 0 and len(audio) >= rate * 1.5  # four half-second steps
    else:
        with pytest.raises(InputError, match="fluidsynth|soundfont") as error:
            _generate(model, b"", None, length=4, format="wav")
        assert error.value.status_code == 503


def test_v2_outputs_are_midi_bytes_and_notes(model: MusicModel) -> None:
    out = _generate(model, b"", None, length=4)
    v2 = TASK.to_v2_outputs(out)
    assert v2["MIDI"][:4] == b"MThd"
    assert json.loads(v2["NOTES"]) == [s["notes"] for s in out["steps"]]


def test_artifact_round_trip_keeps_every_weight(model: ServedMusic, tmp_path: Path) -> None:
    save_music_model(model.model("quarter"), tmp_path, {"data": "quarter"})
    again = TASK.load_model(tmp_path, torch.device("cpu"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
