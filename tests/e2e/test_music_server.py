"""A real server on a free port composing music from the bundled weights: JSON steps, MIDI
(parsed back with pretty_midi), WAV (parsed back with soundfile), a piano-roll PNG,
server-sent events, the Open Inference Protocol with tritonclient, and bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pretty_midi
import pytest

from mmserve.plugins.music.midi import piece_to_midi_bytes
from mmserve.plugins.music.render import audio_missing
from tests.e2e.server_process import running_server

pytestmark = pytest.mark.e2e

PRIMER = [[60, 64, 67, 72], [62, 65, 69, 74], [64, 67, 72, 76], [65, 69, 72, 77]]  # C major, rising


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("music-server"), env={"MMSERVE_PLUGINS": "music"}) as url:
        yield url


def _post(base: str, data: bytes, content_type: str, **params) -> httpx.Response:
    body = {"data": base64.b64encode(data).decode(), "content_type": content_type, **params}
    return httpx.post(f"{base}/v1/music", json=body, timeout=60)


def test_json_continuation_of_a_primer(base):
    response = _post(base, json.dumps(PRIMER).encode(), "application/json", length=8, tempo=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "music" and body["num_steps"] == 8 and body["finished"]
    assert [s["time"] for s in body["steps"]] == [0.5 * t for t in range(8)]
    notes = [s["notes"] for s in body["steps"]]
    # A trained chorale model writes mostly four-part steps in the chorale range; a random one does not.
    assert sum(3 <= len(n) <= 5 for n in notes) >= 6, notes
    assert all(36 <= p <= 84 for n in notes for p in n), notes


def test_midi_answer_is_the_file_and_parses_back(base):
    midi_primer = piece_to_midi_bytes(PRIMER, tempo=100)
    response = _post(base, midi_primer, "audio/midi", length=6, format="midi", temperature=1.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/midi" and response.headers["x-model-version"]
    assert pretty_midi.PrettyMIDI(io.BytesIO(response.content)).instruments  # the file itself
    response = httpx.post(
        f"{base}/v1/music", params={"length": 6, "format": "midi", "temperature": 1.0}, content=midi_primer,
        headers={"content-type": "audio/midi", "accept": "application/json"}, timeout=60,
    )
    body = response.json()  # asked for JSON: the same file, base64, beside the steps
    assert body["content_type"] == "audio/midi"
    midi = pretty_midi.PrettyMIDI(io.BytesIO(base64.b64decode(body["data"])))
    assert {n.pitch for i in midi.instruments for n in i.notes} == {p for s in body["steps"] for p in s["notes"]}


@pytest.mark.skipif(audio_missing() is not None, reason=f"audio rendering unavailable: {audio_missing()}")
def test_wav_answer_parses_back(base):
    import soundfile

    response = httpx.post(f"{base}/v1/music", params={"length": 4, "format": "wav", "tempo": 120}, content=b"", timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate > 0 and len(audio) >= 1.5 * rate and np.abs(audio).max() > 0.001  # two seconds, not silence


def test_stream_sends_one_event_per_time_step_then_the_result(base):
    params = {"length": 5, "stream": "true", "temperature": 1.0, "seed": 3}
    with httpx.stream("POST", f"{base}/v1/music", params=params, content=b"", timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith(("event: ", "data: "))]
    events = [(lines[i].removeprefix("event: "), json.loads(lines[i + 1].removeprefix("data: "))) for i in range(0, len(lines), 2)]
    assert [name for name, _ in events] == ["token"] * 5 + ["result"]
    result = events[-1][1]
    assert [payload["token"] for _, payload in events[:-1]] == [{"step": t, "notes": s["notes"]} for t, s in enumerate(result["steps"])]


def test_length_goes_past_the_server_wide_token_cap(base):
    response = httpx.post(f"{base}/v1/music", params={"length": 40, "temperature": 1.0, "seed": 1}, content=b"", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["num_steps"] == 40 and response.json()["finished"]


def test_same_seed_same_music_among_other_requests(base):
    def params(seed):
        return {"length": 12, "temperature": 1.0, **({} if seed is None else {"seed": seed})}

    async def crowd():
        async with httpx.AsyncClient(timeout=60) as client:
            seeds = (7, None, 8, None, 7)
            return await asyncio.gather(*(client.post(f"{base}/v1/music", params=params(s), content=b"") for s in seeds))

    alone = httpx.post(f"{base}/v1/music", params=params(7), content=b"", timeout=60).json()["steps"]
    crowded = [r.json()["steps"] for r in asyncio.run(crowd())]
    assert crowded[0] == alone and crowded[4] == alone
    assert crowded[2] != alone


def test_score_through_the_api_is_the_benchmark_computation(base):
    import torch

    from mmserve.plugins.music.checkpoint import load_music_model
    from mmserve.plugins.music.data import load_quarter
    from mmserve.plugins.music.evaluate import nll_per_step
    from mmserve.plugins.music.task import MusicTask

    pieces = load_quarter()["test"][:2]
    torch.set_num_threads(1)
    offline = load_music_model(MusicTask().bundled_artifacts())
    for piece in pieces:
        response = _post(base, json.dumps(piece).encode(), "application/json", mode="score")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["num_steps"] == len(piece) and len(body["step_nll"]) == len(piece)
        assert body["nll_per_step"] == pytest.approx(nll_per_step(offline, [piece]), rel=1e-5)
        assert body["nll"] == pytest.approx(body["nll_per_step"] * len(piece), rel=1e-9)


def test_tritonclient_gets_midi_and_notes(base):
    import tritonclient.http as http

    client = http.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_model_ready("music")
    primer = np.array([json.dumps(PRIMER).encode()], dtype=object)
    tensor = http.InferInput("PRIMER", [1], "BYTES")
    tensor.set_data_from_numpy(primer, binary_data=True)
    outputs = [http.InferRequestedOutput("MIDI", binary_data=True), http.InferRequestedOutput("NOTES", binary_data=False)]
    result = client.infer("music", [tensor], outputs=outputs)
    midi = result.as_numpy("MIDI")[0]
    assert bytes(midi)[:4] == b"MThd"
    notes = result.as_numpy("NOTES")[0]
    assert isinstance(json.loads(notes), list)


def test_harmonize_writes_three_voices_under_a_soprano(base):
    from mmserve.plugins.music.data import load_harmony

    melody = load_harmony()["test"][0].melody[:32]  # two bars of 16th-note steps
    response = _post(base, json.dumps(melody).encode(), "application/json", mode="harmonize", seed=2, temperature=0.5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["num_steps"] == 32 and body["finished"] and body["seconds_per_step"] == pytest.approx(0.15)
    assert [s["melody"] for s in body["steps"]] == melody
    four_part = sum(len(s["notes"]) == 4 and max(s["notes"]) == s["melody"][0] for s in body["steps"] if s["melody"])
    assert four_part >= 24, [s["notes"] for s in body["steps"]]  # a trained model writes three voices below


def test_tritonclient_sends_notes_as_int32_voices(base):
    import tritonclient.http as http

    client = http.InferenceServerClient(base.removeprefix("http://"))
    voices = np.array([[[72, 67, 64, 48], [74, 67, 65, 47], [76, -1, 67, 48]]] * 2, dtype=np.int32)  # [N=2, steps, voices]
    tensor = http.InferInput("NOTES", list(voices.shape), "INT32")
    tensor.set_data_from_numpy(voices, binary_data=True)
    outputs = [http.InferRequestedOutput("NOTES", binary_data=False)]
    result = client.infer("music", [tensor], outputs=outputs, parameters={"mode": "score"})
    scores = [json.loads(row) for row in result.as_numpy("NOTES")]
    assert [s["num_steps"] for s in scores] == [3, 3] and scores[0]["nll"] == pytest.approx(scores[1]["nll"])
    primed = client.infer("music", [tensor], parameters={"length": 4, "temperature": 1.0, "seed": 5})
    assert bytes(primed.as_numpy("MIDI")[0])[:4] == b"MThd"
    assert len(json.loads(primed.as_numpy("NOTES")[0])) == 4


@pytest.mark.parametrize(
    ("shape", "data", "status", "words"),
    [
        ([1, 3], [60, 62, 64], 400, "[steps, voices]"),  # no voices axis
        ([1, 2, 2], [60, 64, 200, 62], 422, "range"),
        ([3], [60, 62, 64], 400, "[n, ...]"),
    ],
)
def test_bad_v2_notes_are_a_clear_4xx(base, shape, data, status, words):
    body = {"inputs": [{"name": "NOTES", "datatype": "INT32", "shape": shape, "data": data}]}
    response = httpx.post(f"{base}/v2/models/music/infer", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"].lower(), response.text


@pytest.mark.parametrize(
    ("name", "data", "content_type", "params", "status", "words"),
    [
        ("corrupt midi", b"MThd\x00\x00\x00\x06\x00\x01garbage", "audio/midi", {}, 400, "corrupt"),
        ("no notes", piece_to_midi_bytes([]), "audio/midi", {}, 400, "no notes"),
        ("out of range", b"[[60], [12]]", "application/json", {}, 422, "range"),
        ("too long primer", json.dumps([[60]] * 600).encode(), "application/json", {}, 413, "limit"),
        ("too long request", b"[[60]]", "application/json", {"length": 100000}, 422, "limit of 512 steps"),
        ("unknown option", b"[[60]]", "application/json", {"loudness": 3}, 422, "unknown"),
    ],
)
def test_bad_input_is_a_clear_4xx(base, name, data, content_type, params, status, words):
    response = _post(base, data, content_type, **params)
    assert response.status_code == status, (name, response.text)
    assert words in response.json()["error"].lower(), (name, response.text)
