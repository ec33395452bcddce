"""A real server on a free port captioning real PNG, JPEG and WebP digit scenes, over the task
API and the Open Inference Protocol (with the real tritonclient)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from mmserve.plugins.captioning.data import digit_words, make_example
from tests.e2e.server_process import running_server

pytestmark = pytest.mark.e2e

SCENES = [make_example(i, split="test") for i in range(12)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("captioning-server"), env={"MMSERVE_PLUGINS": "captioning"}) as url:
        yield url


def _reencode(png: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format=fmt, quality=95)
    return out.getvalue()


def _correct(captions: list[str]) -> int:
    return sum(digit_words(c) == s.labels for c, s in zip(captions, SCENES))


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_captions_name_the_digits_in_order(base, fmt, mime):
    captions = []
    for scene in SCENES:
        data = scene.png if fmt == "PNG" else _reencode(scene.png, fmt)
        response = httpx.post(f"{base}/v1/captioning", files={"file": (f"scene.{fmt.lower()}", data, mime)}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "captioning", "version": "1"}
        assert body["tokens"] == body["caption"].split()
        captions.append(body["caption"])
    # Test-split handwriting the model never saw: an untrained model gets ~none right.
    assert _correct(captions) >= 10, list(zip(captions, [s.references[0] for s in SCENES]))


def test_readme_example_raw_body_and_beam_search(base):
    scene = SCENES[0]
    raw = httpx.post(f"{base}/v1/captioning", content=scene.png, headers={"content-type": "image/png"}, timeout=30)
    beam = httpx.post(
        f"{base}/v1/captioning",
        json={"data": base64.b64encode(scene.png).decode(), "beam_size": 3},
        timeout=30,
    )
    assert digit_words(raw.json()["caption"]) == scene.labels
    assert digit_words(beam.json()["caption"]) == scene.labels


def test_attention_grid_per_token(base):
    body = httpx.post(f"{base}/v1/captioning?attention=true", files={"file": ("s.png", SCENES[1].png, "image/png")}, timeout=30).json()
    assert [a["token"] for a in body["attention"]] == body["tokens"]
    grid = np.array(body["attention"][0]["grid"])
    assert grid.ndim == 2 and grid.size > 1
    assert grid.sum() == pytest.approx(1.0, abs=0.01)


def test_tritonclient_gets_captions_binary_and_json(base):
    import tritonclient.http as http

    client = http.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_model_ready("captioning")
    for binary in (True, False):
        images = np.array(
            [s.png if binary else base64.b64encode(s.png) for s in SCENES[:3]], dtype=object
        )
        tensor = http.InferInput("IMAGE", [3], "BYTES")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [http.InferRequestedOutput("CAPTION", binary_data=binary), http.InferRequestedOutput("SCORE", binary_data=binary)]
        result = client.infer("captioning", [tensor], outputs=outputs)
        captions = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("CAPTION")]
        assert [digit_words(c) for c in captions] == [s.labels for s in SCENES[:3]]
        assert result.as_numpy("SCORE").shape == (3,)


def _bad_inputs():
    png = SCENES[0].png
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    huge = io.BytesIO()
    Image.new("L", (5000, 4000)).save(huge, format="PNG")  # 20 Mpx, a few KB compressed
    return [
        ("empty", b"", "image/png", 400, "empty"),
        ("truncated", png[: len(png) // 2], "image/png", 400, "truncated"),
        ("garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png", 400, "corrupt"),
        ("gif", gif.getvalue(), "image/gif", 415, "gif"),
        ("text", b"hello", "text/plain", 415, "text/plain"),
        ("too many pixels", huge.getvalue(), "image/png", 413, "pixels"),
    ]


@pytest.mark.parametrize(("label", "data", "mime", "status", "fragment"), _bad_inputs(), ids=[b[0] for b in _bad_inputs()])
def test_bad_images_are_clear_4xx(base, label, data, mime, status, fragment):
    response = httpx.post(f"{base}/v1/captioning", files={"file": ("x", data, mime)}, timeout=30)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"].lower()


def test_upload_over_the_size_limit_is_413(base):
    response = httpx.post(f"{base}/v1/captioning", files={"file": ("big.png", b"\0" * (15 * 1024 * 1024), "image/png")}, timeout=60)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_metrics_after_traffic(base):
    text = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'mmserve_requests_total{endpoint="v1",status="200",task="captioning"}' in text
    assert 'mmserve_requests_total{endpoint="v2",status="200",task="captioning"}' in text
    assert 'mmserve_encode_batch_size_count{task="captioning"}' in text
