"""A real server naming the actions in MP4, WebM, AVI and GIF clips the test renders, over the
task API and the Open Inference Protocol (tritonclient); bad videos are clear 4xx."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from mmserve.plugins.action.data import make_example
from tests.e2e.server_process import running_server

pytestmark = pytest.mark.e2e

CLIPS = [make_example(i, split="test", fmt="mp4") for i in range(8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("action-server"), env={"MMSERVE_PLUGINS": "action"}) as url:
        yield url


def _offline(clip) -> str:
    """The bundled model's caption for the same bytes, decoded in this process."""
    from mmserve.plugins.action.checkpoint import load_recognizer
    from mmserve.plugins.action.preprocess import video_bytes_to_clip
    from mmserve.plugins.action.task import WEIGHTS_DIR
    from mmserve.plugins.nn.search import greedy_decode
    from mmserve.plugins.task import InputLimits

    model = load_recognizer(WEIGHTS_DIR)
    frames = video_bytes_to_clip(clip.data, clip.content_type, model, InputLimits())
    result = greedy_decode(model, model.encode(model.collate([frames])), 16)[0]
    return " ".join(model.vocab.itos[t] for t in result.tokens)


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def test_mp4_clips_get_their_actions_in_order_with_time_spans(base):
    ious = []
    for clip in CLIPS:
        response = httpx.post(f"{base}/v1/action", files={"file": ("clip.mp4", clip.data, "video/mp4")}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["name"] == "action"
        assert body["tokens"] == body["caption"].split()
        assert " then ".join(f"{a['subject']} {a['action']}" for a in body["actions"]) == body["caption"]
        duration = clip.num_frames / clip.fps
        for action in body["actions"]:
            assert 0 <= action["start_s"] < action["end_s"] <= duration + 1e-6
            assert 0 < action["score"] <= 1
        # The server (batched among other requests) says what the model says alone.
        assert body["caption"] == _offline(clip)
        if body["caption"] == clip.caption:  # the spans of a request without attention=true are real
            truth = [(start / clip.fps, (end + 1) / clip.fps) for start, end in clip.spans]
            ious += [_iou((a["start_s"], a["end_s"]), span) for a, span in zip(body["actions"], truth)]
    assert len(ious) >= 10, "most of these clips should be named right"
    assert sum(ious) / len(ious) > 0.6, ious


@pytest.mark.parametrize("fmt", ["webm", "avi", "gif"])
def test_other_containers_and_body_styles(base, fmt):
    clip = make_example(2, split="test", fmt=fmt)
    reference = httpx.post(f"{base}/v1/action", files={"file": ("clip", clip.data, clip.content_type)}, timeout=60)
    raw = httpx.post(f"{base}/v1/action", content=clip.data, headers={"content-type": clip.content_type}, timeout=60)
    encoded = httpx.post(f"{base}/v1/action", json={"data": base64.b64encode(clip.data).decode()}, timeout=60)
    for response in (reference, raw, encoded):
        assert response.status_code == 200, response.text
    assert raw.json()["caption"] == reference.json()["caption"] == encoded.json()["caption"]


def test_attention_over_frames_per_token(base):
    clip = CLIPS[1]
    body = httpx.post(f"{base}/v1/action?attention=true", files={"file": ("c.mp4", clip.data, "video/mp4")}, timeout=60).json()
    assert [a["token"] for a in body["attention"]] == body["tokens"]
    row = np.array(body["attention"][0]["frames"])
    assert row.shape == (clip.num_frames,) and row.sum() == pytest.approx(1.0, abs=0.01)


def test_tritonclient_video_bytes(base):
    import tritonclient.http as http

    client = http.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_model_ready("action")
    videos = np.array([c.data for c in CLIPS[:3]], dtype=object)
    tensor = http.InferInput("VIDEO", [3], "BYTES")
    tensor.set_data_from_numpy(videos, binary_data=True)
    outputs = [http.InferRequestedOutput("CAPTION", binary_data=True), http.InferRequestedOutput("ACTIONS", binary_data=False)]
    result = client.infer("action", [tensor], outputs=outputs)
    captions = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("CAPTION")]
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)



def test_tritonclient_frames_uint8(base):
    """FRAMES UINT8 [N, T, H, W, 3]: decoded frames instead of a file; answers what the model gives offline."""
    import tritonclient.http as http

    from mmserve.plugins.action.checkpoint import load_recognizer
    from mmserve.plugins.action.clips import sample_clip
    from mmserve.plugins.action.render import render_clip
    from mmserve.plugins.action.task import WEIGHTS_DIR
    from mmserve.plugins.nn.search import greedy_decode

    clips = [render_clip(sample_clip("test", i)) for i in range(2)]
    length = min(len(c) for c in clips)  # one tensor: every clip of the batch has T frames
    clips = [c[:length] for c in clips]
    frames = np.stack([c.permute(0, 2, 3, 1).numpy() for c in clips])  # [2, T, 32, 48, 3]
    client = http.InferenceServerClient(base.removeprefix("http://"))
    tensor = http.InferInput("FRAMES", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames, binary_data=True)
    result = client.infer("action", [tensor], outputs=[http.InferRequestedOutput("CAPTION", binary_data=True)])
    captions = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("CAPTION")]
    model = load_recognizer(WEIGHTS_DIR)
    expected = [" ".join(model.vocab.itos[t] for t in r.tokens)
                for r in greedy_decode(model, model.encode(model.collate(clips)), 16)]  # fmt: skip
    assert captions == expected
    bad = http.InferInput("FRAMES", [1, 2, 4, 4, 1], "UINT8")  # one channel, not three
    bad.set_data_from_numpy(np.zeros((1, 2, 4, 4, 1), dtype=np.uint8), binary_data=True)
    with pytest.raises(Exception, match="400|uint8"):
        client.infer("action", [bad])

def _bad_videos():
    mp4 = CLIPS[0].data
    return [
        ("empty", b"", "video/mp4", 400),
        ("truncated", mp4[: len(mp4) // 2], "video/mp4", 400),
        ("text", b"hello, not a video", "text/plain", 415),
        ("image", base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="),
         "image/png", 415),
    ]


@pytest.mark.parametrize(("label", "data", "mime", "status"), _bad_videos(), ids=[b[0] for b in _bad_videos()])
def test_bad_videos_are_clear_4xx(base, label, data, mime, status):
    response = httpx.post(f"{base}/v1/action", files={"file": ("x", data, mime)}, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]
