"""decode_video: sampling, resizing and colours for each container/codec; every bad upload a clear 4xx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.media import VideoInfo, decode_video
from tests.unit.media_fixtures import (
    HEIGHT,
    SQUARE,
    TOP,
    WIDTH,
    encode_audio,
    encode_video,
    mutations,
    square_x,
    stereo_sine,
)

SIZE = (24, 32)  # (H, W): half the source in each direction
LIMITS = {"max_upload_bytes": 1_000_000, "max_frames": 64, "max_pixels": 100_000, "max_duration_s": 10.0}
SOURCE_FPS, SOURCE_FRAMES = 10, 20  # the fixtures: 2.0 s

CASES = [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mjpeg"), ("avi", "mpeg4"), ("gif", "gif")]
IDS = [f"{fmt}-{codec}" for fmt, codec in CASES]


def decode(data: bytes, content_type: str | None = None, **kwargs) -> tuple[torch.Tensor, VideoInfo]:
    kwargs = {"size": SIZE, **LIMITS, **kwargs}
    return decode_video(data, content_type, **kwargs)


def exact_type(excinfo: pytest.ExceptionInfo, kind: type) -> None:
    assert type(excinfo.value) is kind, f"expected {kind.__name__}, got {type(excinfo.value).__name__}: {excinfo.value}"


def assert_square_where_expected(clip: torch.Tensor, times: list[float]) -> None:
    """Each returned frame shows the red square of the source frame at its time, on blue."""
    scale_y, scale_x = SIZE[0] / HEIGHT, SIZE[1] / WIDTH
    for picture, seconds in zip(clip, times):
        index = round(seconds * SOURCE_FPS)
        centre_x = int((square_x(index) + SQUARE / 2) * scale_x)
        centre_y = int((TOP + SQUARE / 2) * scale_y)
        red = picture[:, centre_y, centre_x].tolist()
        assert red[0] > 180 and red[2] < 80, f"frame at {seconds}s: expected red at x={centre_x}, got {red}"
        blue = picture[:, 2, centre_x].tolist()  # above the square
        assert blue[2] > 180 and blue[0] < 80, f"frame at {seconds}s: expected blue background, got {blue}"


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def clip_bytes(request) -> bytes:
    fmt, codec = request.param
    return encode_video(fmt, codec, frames=SOURCE_FRAMES, rate=SOURCE_FPS)


def test_frames_n_are_evenly_spaced(clip_bytes: bytes) -> None:
    clip, info = decode(clip_bytes, frames=5)
    assert clip.shape == (5, 3, *SIZE) and clip.dtype == torch.uint8
    assert info.source_frames == SOURCE_FRAMES
    assert info.source_fps == pytest.approx(SOURCE_FPS, rel=0.01)
    assert info.duration_s == pytest.approx(SOURCE_FRAMES / SOURCE_FPS, abs=0.01)
    # Middles of 5 equal slices of 2.0 s fall on frames here: 0.2, 0.6, ... exactly.
    assert info.sampled_times_s == pytest.approx([0.2, 0.6, 1.0, 1.4, 1.8], abs=1e-3)
    gaps = np.diff(info.sampled_times_s)
    assert np.allclose(gaps, gaps[0], atol=1e-3)
    assert_square_where_expected(clip, info.sampled_times_s)


def test_fps_r_takes_the_frame_on_screen(clip_bytes: bytes) -> None:
    clip, info = decode(clip_bytes, fps=4.0)
    assert clip.shape == (8, 3, *SIZE)  # 2.0 s at 4 fps
    for k, seconds in enumerate(info.sampled_times_s):
        # the frame on screen at k/4 s started at most one source frame earlier
        assert k / 4 - 1 / SOURCE_FPS - 1e-6 <= seconds <= k / 4 + 1e-6, (k, seconds)
    assert_square_where_expected(clip, info.sampled_times_s)


def test_no_sampling_returns_every_frame(clip_bytes: bytes) -> None:
    clip, info = decode(clip_bytes)
    assert clip.shape == (SOURCE_FRAMES, 3, *SIZE)
    assert info.sampled_times_s == pytest.approx([i / SOURCE_FPS for i in range(SOURCE_FRAMES)], abs=1e-3)
    assert_square_where_expected(clip, info.sampled_times_s)


def test_more_frames_than_the_source_repeats_frames() -> None:
    data = encode_video("webm", "libvpx-vp9", frames=4, rate=SOURCE_FPS)
    clip, info = decode(data, frames=8)
    assert clip.shape == (8, 3, *SIZE)
    assert info.sampled_times_s == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3], abs=1e-3)
    assert torch.equal(clip[0], clip[1]) and not torch.equal(clip[1], clip[2])


# ---- failures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_video("mp4", "libx264", frames=SOURCE_FRAMES, rate=SOURCE_FPS)


def test_empty_body() -> None:
    with pytest.raises(InputError, match="empty: expected a video") as excinfo:
        decode(b"")
    exact_type(excinfo, InputError)


def test_upload_over_the_byte_limit(mp4: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match="bytes, over the limit of 100 bytes"):
        decode(mp4, max_upload_bytes=100)


def test_text_sent_as_video() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain data starting") as excinfo:
        decode(b"<html>not a video</html>\n" * 40)
    exact_type(excinfo, UnsupportedMediaType)


def test_audio_sent_to_decode_video() -> None:
    wav = encode_audio("wav", "pcm_s16le", stereo_sine(8000), 8000)
    with pytest.raises(InputError, match=r"no video stream \(it holds audio \(pcm_s16le\)\)") as excinfo:
        decode(wav, "application/octet-stream")
    exact_type(excinfo, InputError)
    with pytest.raises(UnsupportedMediaType, match="content type 'audio/wav' is not supported"):
        decode(wav, "audio/wav")


@pytest.mark.parametrize("fmt,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mjpeg")])
@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.9])
def test_truncated_upload(fmt: str, codec: str, keep: float) -> None:
    data = encode_video(fmt, codec, frames=SOURCE_FRAMES, rate=SOURCE_FPS)
    with pytest.raises(InputError, match="truncated or corrupt") as excinfo:
        decode(data[: int(len(data) * keep)], frames=4)
    exact_type(excinfo, InputError)


@pytest.mark.parametrize("magic", [b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3", b"RIFF\x00\x10\x00\x00AVI LIST"])
def test_garbage_after_valid_magic(magic: bytes) -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match="truncated or corrupt|no video stream") as excinfo:
        decode(magic + garbage)
    exact_type(excinfo, InputError)


def test_too_many_pixels_per_frame(mp4: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match=r"64x48 = 3072 pixels per frame, over the limit of 3000 pixels"):
        decode(mp4, frames=2, max_pixels=3000)


def test_too_long_by_the_header(mp4: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match=r"2\.00 s long according to its header, over the limit of 1\.5 s"):
        decode(mp4, frames=2, max_duration_s=1.5)


def test_too_long_while_demuxing_when_the_header_is_silent(monkeypatch, mp4: bytes) -> None:
    import mmserve.plugins.media.video as video_module

    monkeypatch.setattr(video_module, "header_duration_s", lambda container, stream: None)
    with pytest.raises(PayloadTooLarge, match=r"at least .* s long, over the limit of 1\.5 s"):
        decode(mp4, frames=2, max_duration_s=1.5)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"frames": 65}, "65 frames requested, over the limit of 64 frames"),
        ({"fps": 40.0}, "sampling at 40 fps gives 80 frames, over the limit of 64 frames"),
        ({}, "taking every frame gives 20 frames, over the limit of 16 frames"),
    ],
)
def test_too_many_frames(mp4: bytes, sampling: dict, message: str) -> None:
    limit = 16 if not sampling else 64
    with pytest.raises(PayloadTooLarge, match=message):
        decode(mp4, **sampling, max_frames=limit)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"frames": 0}, "frames must be a positive"),
        ({"fps": -1.0}, "fps must be a positive"),
        ({"frames": 2, "fps": 1.0}, "not both"),
    ],
)
def test_bad_sampling_arguments(mp4: bytes, sampling: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as excinfo:
        decode(mp4, **sampling)
    exact_type(excinfo, InputError)


@pytest.mark.parametrize(("fmt", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("gif", "gif")])
def test_damaged_uploads_never_escape_as_other_errors(fmt: str, codec: str) -> None:
    """Whatever FFmpeg makes of damaged bytes, the caller sees frames or an InputError."""
    data = encode_video(fmt, codec, frames=SOURCE_FRAMES, rate=SOURCE_FPS)
    refused = 0
    for damaged in mutations(data, 30, seed=len(fmt)):
        try:
            decode(damaged, frames=4)
        except InputError:
            refused += 1
    assert refused > 0  # the damage is real: some of it must be refused
