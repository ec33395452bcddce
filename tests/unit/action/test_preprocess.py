"""Video bytes -> the action model's clip through the shared decoder; bad uploads are 4xx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmserve.plugins.action.data import action_vocabulary, make_example
from mmserve.plugins.action.model import ActionConfig, ActionRecognizer, ClipEncoderConfig
from mmserve.plugins.action.preprocess import FRAMES_CONTENT_TYPE, decode_frames, sampling, video_bytes_to_clip
from mmserve.plugins.action.task import ActionTask
from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.task import InputLimits

LIMITS = InputLimits(max_upload_bytes=2_000_000, max_pixels=1_000_000, max_frames=64, max_duration_s=10)


@pytest.fixture(scope="module")
def model() -> ActionRecognizer:
    return ActionRecognizer(ActionConfig(ClipEncoderConfig(stem_width=4, stage_widths=(8,), stage_strides=(2,), frame_dim=8)), action_vocabulary())


@pytest.fixture(scope="module")
def mp4():
    return make_example(3, fmt="mp4")


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi", "gif"])
def test_every_container_gives_the_clip_at_its_own_pace(model, fmt):
    example = make_example(3, fmt=fmt)
    clip = video_bytes_to_clip(example.data, example.content_type, model, LIMITS)
    assert clip.dtype == torch.uint8 and clip.shape == (example.num_frames, 3, 32, 48)  # 8 fps in, 8 fps out
    assert ActionTask().input_cost(clip) == example.num_frames


def test_sampling_parameters(model, mp4):
    assert sampling(model) == (None, 8.0)
    assert sampling(model, {"frames": "12"}) == (12, None)
    clip = video_bytes_to_clip(mp4.data, "video/mp4", model, LIMITS, {"frames": 10})
    assert clip.shape[0] == 10
    clip = video_bytes_to_clip(mp4.data, "video/mp4", model, LIMITS, {"fps": 4})
    assert clip.shape[0] == -(-mp4.num_frames // 2)
    with pytest.raises(InputError, match="either frames or fps"):
        sampling(model, {"frames": 3, "fps": 2})
    with pytest.raises(InputError, match="integer"):
        sampling(model, {"frames": "many"})


def test_bad_uploads_are_clear_4xx(model, mp4):
    cases = [
        (b"", "video/mp4", InputError, "empty"),
        (mp4.data[: len(mp4.data) // 2], "video/mp4", InputError, None),
        (b"hello, this is not a video at all", "video/mp4", UnsupportedMediaType, None),
        (mp4.data, "application/pdf", UnsupportedMediaType, None),
    ]
    for data, content_type, error, message in cases:
        with pytest.raises(error, match=message) as info:
            video_bytes_to_clip(data, content_type, model, LIMITS)
        assert 400 <= info.value.status_code < 500
    small = {
        "max_upload_bytes": ("bytes", InputLimits(max_upload_bytes=1000)),
        "max_frames": ("frames", InputLimits(max_frames=4)),
        "max_duration_s": ("s", InputLimits(max_duration_s=0.5)),
        "max_pixels": ("pixels", InputLimits(max_pixels=100)),
    }
    for limit, (word, limits) in small.items():
        with pytest.raises(PayloadTooLarge, match=word) as info:
            video_bytes_to_clip(mp4.data, "video/mp4", model, limits)
        assert info.value.status_code == 413, limit


def test_requested_sampling_reaches_preprocess_and_its_frame_times_reach_postprocess(model, mp4):
    from mmserve.plugins.action.task import SamplingOptions
    from mmserve.plugins.nn.decoding import DecodeResult
    from mmserve.plugins.task import Prepared

    task = ActionTask()
    prepared = task.preprocess(mp4.data, "video/mp4", model, LIMITS, options=SamplingOptions(frames=6))
    assert isinstance(prepared, Prepared) and prepared.inputs.shape[0] == 6
    times = prepared.context
    assert len(times) == 6 and times == sorted(times) and times[-1] > times[0]
    vocab = model.vocab
    tokens = [vocab.stoi[w] for w in ("one", "moves", "left")]
    attention = torch.zeros(3, 6)
    attention[:, 2] = 1.0  # every word looks at frame 2
    output = task.postprocess(DecodeResult(tokens, -0.5, attention), model, False, context=times)
    assert output["actions"] and output["actions"][0]["start_s"] == round(times[2], 3)


def test_sampling_options_are_validated():
    from pydantic import ValidationError

    from mmserve.plugins.action.task import SamplingOptions

    with pytest.raises(ValidationError):
        SamplingOptions(fps=0)
    with pytest.raises(ValidationError):
        SamplingOptions(frames=0)


def _frames_bytes(frames: np.ndarray) -> tuple[bytes, str | None]:
    return ActionTask().v2_input("FRAMES", frames)


def test_v2_frames_input_is_the_clip_as_sent(model):
    from mmserve.plugins.action.clips import sample_clip
    from mmserve.plugins.action.render import render_clip

    clip = render_clip(sample_clip("test", 2))  # [T, 3, 32, 48]
    data, content_type = _frames_bytes(clip.permute(0, 2, 3, 1).numpy())  # [T, H, W, 3]
    assert content_type == FRAMES_CONTENT_TYPE
    prepared = ActionTask().preprocess(data, content_type, model, LIMITS)
    torch.testing.assert_close(prepared.inputs, clip)  # already the model's size: unchanged
    assert prepared.context == [k / 8 for k in range(clip.shape[0])]
    # other sizes are resized like decoded video; frames=N keeps N, fps says their rate
    big = np.repeat(np.repeat(clip.permute(0, 2, 3, 1).numpy(), 3, axis=1), 3, axis=2)  # [T, 96, 144, 3]
    frames, times = decode_frames(_frames_bytes(big)[0], model, LIMITS, {"frames": 4})
    assert frames.shape == (4, 3, 32, 48) and len(times) == 4 and times == sorted(times)
    assert float((frames.float() - clip[[round((k + 0.5) * len(clip) / 4) for k in range(4)]].float()).abs().mean()) < 8
    assert decode_frames(data, model, LIMITS, {"fps": 4})[1][:3] == [0.0, 0.25, 0.5]


def test_bad_v2_frames_are_clear_4xx(model):
    good = np.zeros((5, 32, 48, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="uint8"):
        _frames_bytes(good.astype(np.float32))
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        _frames_bytes(good[..., :1])
    with pytest.raises(InputError, match="T, H, W >= 1"):
        _frames_bytes(good[:0])
    with pytest.raises(InputError, match="NumPy"):
        decode_frames(b"not an array", model, LIMITS)
    with pytest.raises(PayloadTooLarge, match="64 frames"):
        decode_frames(_frames_bytes(np.zeros((65, 4, 4, 3), dtype=np.uint8))[0], model, LIMITS)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_frames(_frames_bytes(np.zeros((1, 1001, 1000, 3), dtype=np.uint8))[0], model, LIMITS)
    with pytest.raises(InputError, match="positive"):
        decode_frames(_frames_bytes(good)[0], model, LIMITS, {"frames": 0})
    with pytest.raises(InputError, match="takes no numeric"):
        ActionTask().v2_input("NOTES", good)
