"""A real server transcribing clips that espeak-ng speaks during the test (held-out voices):
the task API in several containers, the OpenAI-compatible route through the real `openai`
SDK (every response format, streaming, errors), tritonclient, and bad inputs."""

from __future__ import annotations

import functools
import io
import shutil
import wave

import httpx
import numpy as np
import pytest
import torch
import torchaudio

from mmserve.plugins.nn.search import DecodeParams, decode
from mmserve.plugins.speech import data
from mmserve.plugins.speech.latency import pcm16_wav
from mmserve.plugins.speech.task import SpeechTask
from mmserve.plugins.task import InputLimits, Segments
from tests.e2e.server_process import running_server
from tests.unit.media_fixtures import encode_audio

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make speech-deps)"),
]

SENTENCES = ["please call me at seven", "the water is very cold today", "she has three hundred books"]


def _clip(index: int) -> tuple[bytes, str]:
    """A held-out-voice clip as 16-bit mono WAV at 22.05 kHz (resampled by the server)."""
    voice = data.Voice(data.voices("test")[index * 17], 160, 50, 100)
    samples = data.synthesize(SENTENCES[index], voice)
    return pcm16_wav(samples, 16000), SENTENCES[index]


CLIPS = [_clip(i) for i in range(len(SENTENCES))] if shutil.which("espeak-ng") else []


@functools.lru_cache(maxsize=1)
def _bundled():
    task = SpeechTask()
    return task, task.load_model(task.bundled_artifacts(), torch.device("cpu"))


def offline(audio: bytes, mime: str, beam_size: int = SpeechTask.default_beam_size) -> str:
    """The bundled model's transcript of these bytes, in this process, by the server's default
    beam (or `beam_size`): what the server must answer. (Its accuracy is measured by `mmserve
    eval speech`, not here.)"""
    task, model = _bundled()
    inputs = task.preprocess(audio, mime, model, InputLimits())
    parts = inputs.parts if isinstance(inputs, Segments) else [inputs]
    params = DecodeParams(task.default_max_length, beam_size, length_penalty=task.default_length_penalty)
    with torch.no_grad():
        texts = [task.postprocess(decode(model, model.encode(model.collate([p])), params)[0], model, False)["text"]
                 for p in parts]  # fmt: skip
    return " ".join(t for t in texts if t)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    env = {"MMSERVE_PLUGINS": "speech", "MMSERVE_MAX_DURATION_S": "20"}
    with running_server(tmp_path_factory.mktemp("speech-server"), env=env) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_task_api_transcribes_held_out_voices(base):
    for audio, _ in CLIPS:
        body = httpx.post(f"{base}/v1/speech", files={"file": ("clip.wav", audio, "audio/wav")}, timeout=60).json()
        assert body["model"]["name"] == "speech"
        assert body["text"] == offline(audio, "audio/wav")
        assert "".join(body["tokens"]).split() == body["text"].split()
        assert [w["word"] for w in body["words"]] == body["text"].split()
        assert all(0 <= w["start"] < w["end"] <= body["duration"] + 0.2 for w in body["words"])
    audio, _ = CLIPS[0]
    greedy = httpx.post(f"{base}/v1/speech?beam_size=1", files={"file": ("clip.wav", audio, "audio/wav")}, timeout=60)
    assert greedy.json()["text"] == offline(audio, "audio/wav", beam_size=1)


def test_a_long_upload_is_transcribed_in_segments_on_its_own_clock(base, client):
    rng = np.random.default_rng(0)
    pieces = []
    for audio, _ in CLIPS * 2:  # ~15 s: six sentences with pauses between them
        with wave.open(io.BytesIO(audio)) as w:
            pieces.append(np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768)
        pieces.append((rng.standard_normal(8000) * 0.002).astype(np.float32))
    long = pcm16_wav(np.concatenate(pieces), 16000)
    body = httpx.post(f"{base}/v1/speech", files={"file": ("long.wav", long, "audio/wav")}, timeout=120).json()
    assert body["text"] == offline(long, "audio/wav")
    seconds = sum(len(p) for p in pieces) / 16000
    assert len(body["segments"]) >= 2 and abs(body["duration"] - seconds) < 0.5
    starts = [segment["start"] for segment in body["segments"]]
    assert starts == sorted(starts) and body["segments"][-1]["end"] <= body["duration"] + 0.01
    assert [w["word"] for w in body["words"]] == body["text"].split()
    assert all(0 <= w["start"] < w["end"] <= body["duration"] + 0.2 for w in body["words"])
    assert max(w["end"] for w in body["words"]) > seconds / 2  # times on the upload's clock, not each segment's
    verbose = client.audio.transcriptions.create(model="speech", file=("long.wav", long, "audio/wav"),
                                                 response_format="verbose_json")  # fmt: skip
    assert verbose.text == body["text"] and len(verbose.segments) == len(body["segments"])
    srt = client.audio.transcriptions.create(model="speech", file=("long.wav", long, "audio/wav"), response_format="srt")
    assert srt.count(" --> ") == len(body["segments"])


@pytest.mark.parametrize(("fmt", "codec", "mime"), [("flac", "flac", "audio/flac"), ("ogg", "libopus", "audio/ogg"),
                                                     ("mp3", "libmp3lame", "audio/mpeg")])  # fmt: skip
def test_compressed_uploads_at_other_rates_and_stereo(base, fmt, codec, mime):
    audio, _ = CLIPS[0]
    with wave.open(io.BytesIO(audio)) as w:
        mono = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    import torch
    import torchaudio.functional as AF

    rate = 48000
    resampled = AF.resample(torch.from_numpy(mono), 16000, rate).numpy()
    encoded = encode_audio(fmt, codec, np.stack([resampled, resampled]), rate)
    body = httpx.post(f"{base}/v1/speech", files={"file": (f"clip.{fmt}", encoded, mime)}, timeout=60).json()
    assert body["text"] == offline(encoded, mime)


def test_openai_sdk_every_response_format(client):
    audio, _ = CLIPS[1]
    result = client.audio.transcriptions.create(model="speech", file=("clip.wav", audio, "audio/wav"))
    assert result.text == offline(audio, "audio/wav")
    plain = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio), response_format="text")
    assert plain.strip() == result.text
    srt = client.audio.transcriptions.create(model="speech", file=("clip.wav", audio), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and result.text in srt
    vtt = client.audio.transcriptions.create(model="speech", file=("clip.wav", audio), response_format="vtt")
    assert vtt.startswith("WEBVTT") and result.text in vtt
    verbose = client.audio.transcriptions.create(
        model="speech", file=("clip.wav", audio), response_format="verbose_json", timestamp_granularities=["word"],
        language="en", prompt="ignored", temperature=0.0,
    )  # fmt: skip
    assert verbose.text == result.text and verbose.duration > 0
    assert [w.word for w in verbose.words] == result.text.split()


def test_openai_sdk_streaming(client):
    audio, _ = CLIPS[2]
    final = client.audio.transcriptions.create(model="speech", file=("clip.wav", audio))
    events = list(client.audio.transcriptions.create(model="speech", file=("clip.wav", audio), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    # A stream decodes greedily (a beam knows its output only at the end); the rest by beam.
    assert final.text == offline(audio, "audio/wav")
    assert len(done) == 1 and done[0].text == offline(audio, "audio/wav", beam_size=1)
    assert " ".join("".join(deltas).split()) == done[0].text


def test_openai_errors_have_openai_shape(client):
    import openai

    audio, _ = CLIPS[0]
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(model="no-such-model", file=("clip.wav", audio))
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as corrupt:
        client.audio.transcriptions.create(model="speech", file=("clip.wav", b"RIFF\x00\x00\x00\x00WAVEjunk"))
    assert corrupt.value.body["type"] == "invalid_request_error"


def test_tritonclient_audio_bytes(base):
    import tritonclient.http as http

    client = http.InferenceServerClient(base.removeprefix("http://"))
    tensor = http.InferInput("AUDIO", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([CLIPS[0][0]], dtype=object), binary_data=True)
    result = client.infer("speech", [tensor], outputs=[http.InferRequestedOutput("TEXT", binary_data=False)])
    text = result.as_numpy("TEXT")[0]
    text = text.decode() if isinstance(text, bytes) else text
    assert text == offline(CLIPS[0][0], "audio/wav")


def test_tritonclient_fp32_waveform_with_sample_rate(base):
    """WAVEFORM FP32 [1, N] plus its sample_rate parameter: the samples themselves, no file."""
    import tritonclient.http as http

    voice = data.Voice(data.voices("test")[5], 160, 50, 100)
    samples = data.synthesize(SENTENCES[1], voice)  # 16 kHz
    at_22k = torchaudio.functional.resample(torch.from_numpy(samples), 16000, 22050).numpy().astype(np.float32)
    client = http.InferenceServerClient(base.removeprefix("http://"))
    inputs = {i["name"]: i for i in client.get_model_metadata("speech")["inputs"]}
    assert inputs["WAVEFORM"] == {"name": "WAVEFORM", "datatype": "FP32", "shape": [-1, -1]}
    tensor = http.InferInput("WAVEFORM", [1, len(at_22k)], "FP32")
    tensor.set_data_from_numpy(at_22k[None], binary_data=True)
    tensor._parameters["sample_rate"] = 22050  # tritonclient has no public setter for input parameters
    result = client.infer("speech", [tensor], outputs=[http.InferRequestedOutput("TEXT", binary_data=False)])
    text = result.as_numpy("TEXT")[0]
    text = text.decode() if isinstance(text, bytes) else text
    audio, mime = SpeechTask().v2_input("WAVEFORM", at_22k, {"sample_rate": 22050})
    assert text == offline(audio, mime)
    # A bad rate is a 400 that names the parameter.
    body = {"inputs": [{"name": "WAVEFORM", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 0.1, 0.2],
                        "parameters": {"sample_rate": -5}}]}  # fmt: skip
    response = httpx.post(f"{base}/v2/models/speech/infer", json=body, timeout=30)
    assert response.status_code == 400 and "sample_rate" in response.json()["error"]


def test_bad_audio_is_a_clear_4xx_and_silence_is_not_an_error(base):
    def post(audio: bytes, mime: str = "audio/wav") -> httpx.Response:
        return httpx.post(f"{base}/v1/speech", files={"file": ("x.wav", audio, mime)}, timeout=60)

    assert post(b"").status_code == 400
    assert post(CLIPS[0][0][:60]).status_code == 400  # the header and a few samples: truncated
    assert post(b"RIFF\x00\x00\x00\x00WAVEjunk").status_code == 400
    assert post(b"hello", "text/plain").status_code == 415
    long = post(pcm16_wav(np.zeros(16000 * 25, np.float32), 16000))
    assert long.status_code == 413 and "25.00 s" in long.json()["error"]
    silence = post(pcm16_wav(np.zeros(16000 * 2, np.float32), 16000))
    assert silence.status_code == 200 and silence.json()["text"] == ""
