"""A real server on a free port composing music from the bundled weights: JSON steps, MIDI
(parsed back with pretty_midi), WAV (parsed back with soundfile), a piano-roll PNG,
server-sent events, the Open Inference Protocol with tritonclient, and bad input."""

from __future__ import annotations

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


def test_stream_sends_one_event_per_token_then_the_result(base):
    with httpx.stream("POST", f"{base}/v1/music", params={"length": 3, "stream": "true"}, content=b"", timeout=60) as r:
        assert r.status_code == 200
        events = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]
    assert events.count("token") >= 3 and events[-1] == "result"


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
