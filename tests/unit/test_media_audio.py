"""decode_audio: every container/codec round-trips a sine tone; every bad upload is a clear 4xx."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.media import audio_duration_s, decode_audio
from tests.unit.media_fixtures import encode_audio, encode_video, mutations, sine, stereo_sine

TARGET = 16_000
LIMITS = {"max_upload_bytes": 1_000_000, "max_duration_s": 10.0}

# (container, codec, source rate): stereo 0.5 s, 1 kHz, amplitude 0.5. Opus only runs at
# 8/12/16/24/48 kHz, so 48 kHz stands in for 44.1 kHz there.
CASES = [
    ("wav", "pcm_s16le", 8000),
    ("wav", "pcm_s16le", 44100),
    ("flac", "flac", 8000),
    ("flac", "flac", 44100),
    ("ogg", "vorbis", 8000),
    ("ogg", "vorbis", 44100),
    ("ogg", "libopus", 8000),
    ("ogg", "libopus", 48000),
    ("mp3", "libmp3lame", 8000),
    ("mp3", "libmp3lame", 44100),
    ("webm", "libopus", 48000),
    ("ipod", "aac", 8000),  # .m4a
    ("ipod", "aac", 44100),
]


def decode(data: bytes, content_type: str | None = None, **overrides) -> np.ndarray:
    waveform = decode_audio(data, content_type, sample_rate=TARGET, **{**LIMITS, **overrides})
    assert waveform.dtype.is_floating_point and waveform.ndim == 1
    return waveform.numpy()


def dominant_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum) * rate / len(waveform))


def exact_type(excinfo: pytest.ExceptionInfo, kind: type) -> None:
    # UnsupportedMediaType and PayloadTooLarge subclass InputError: check the exact class.
    assert type(excinfo.value) is kind, f"expected {kind.__name__}, got {type(excinfo.value).__name__}: {excinfo.value}"


@pytest.mark.parametrize(("fmt", "codec", "rate"), CASES, ids=[f"{f}-{c}-{r}" for f, c, r in CASES])
def test_sine_round_trips_to_mono_16k(fmt: str, codec: str, rate: int) -> None:
    data = encode_audio(fmt, codec, stereo_sine(rate), rate)
    waveform = decode(data, f"audio/{fmt}")
    assert waveform.dtype == np.float32
    # 0.5 s at 16 kHz; lossy codecs add up to a few ms of priming/padding.
    assert abs(len(waveform) - TARGET // 2) <= 0.03 * TARGET, len(waveform)
    assert abs(dominant_hz(waveform, TARGET) - 1000.0) <= 10.0
    middle = waveform[len(waveform) // 4 : 3 * len(waveform) // 4]  # away from codec edge effects
    assert 0.4 <= np.abs(middle).max() <= 0.6, np.abs(middle).max()
    assert np.abs(waveform).max() <= 1.0


def test_wav_length_is_exact_after_resampling() -> None:
    data = encode_audio("wav", "pcm_s16le", stereo_sine(44100, seconds=1.0), 44100)
    assert len(decode(data)) == TARGET


def test_channels_are_averaged() -> None:
    tone = sine(8000, 0.5, 440.0, 0.8)
    data = encode_audio("wav", "pcm_s16le", np.stack([tone, np.zeros_like(tone)]), 8000)  # left only
    waveform = decode(data)
    assert abs(np.abs(waveform[1000:-1000]).max() - 0.4) < 0.02  # (0.8 + 0) / 2
    opposite = encode_audio("wav", "pcm_s16le", np.stack([tone, -tone]), 8000)
    assert np.abs(decode(opposite)).max() < 1e-3  # L + R cancel


def test_odd_sample_rate_uses_the_fallback_resampler() -> None:
    rate = 44101  # gcd(44101, 16000) = 1: torchaudio's kernel would be 16000 x 44101
    data = encode_audio("wav", "pcm_s16le", stereo_sine(rate), rate)
    waveform = decode(data)
    assert abs(len(waveform) - TARGET // 2) <= 64
    assert abs(dominant_hz(waveform, TARGET) - 1000.0) <= 10.0


def test_duration_helper_reads_the_header() -> None:
    data = encode_audio("flac", "flac", stereo_sine(8000, seconds=0.75), 8000)
    assert audio_duration_s(data, None, max_upload_bytes=10**6) == pytest.approx(0.75, abs=0.01)


# ---- failures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode_audio("wav", "pcm_s16le", stereo_sine(8000), 8000)


def test_empty_body(wav: bytes) -> None:
    with pytest.raises(InputError, match="empty: expected audio") as excinfo:
        decode(b"")
    exact_type(excinfo, InputError)


def test_upload_over_the_byte_limit(wav: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match=f"over the limit of {len(wav) - 1} bytes"):
        decode(wav, max_upload_bytes=len(wav) - 1)


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "application/json"])
def test_declared_type_that_is_not_audio(wav: bytes, content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"content type '{content_type}' is not supported"):
        decode(wav, content_type)


def test_text_sent_as_audio() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain data starting 'hello") as excinfo:
        decode(b"hello, this is a transcript, not a recording\n" * 20, "application/octet-stream")
    exact_type(excinfo, UnsupportedMediaType)


def test_an_image_sent_as_audio() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    with pytest.raises(UnsupportedMediaType, match="image/png"):
        decode(png)


TRUNCATIONS = [("wav", "pcm_s16le"), ("flac", "flac"), ("ogg", "vorbis"), ("webm", "libopus"), ("ipod", "aac")]


@pytest.mark.parametrize(("fmt", "codec"), TRUNCATIONS, ids=[f for f, _ in TRUNCATIONS])
@pytest.mark.parametrize("keep", [0.01, 0.1, 0.5, 0.9])
def test_truncated_upload(fmt: str, codec: str, keep: float) -> None:
    rate = 48000 if codec == "libopus" else 8000
    data = encode_audio(fmt, codec, stereo_sine(rate), rate)
    with pytest.raises(InputError, match="truncated or corrupt") as excinfo:
        decode(data[: max(4, int(len(data) * keep))])
    exact_type(excinfo, InputError)


@pytest.mark.parametrize("magic", [b"RIFF\x00\x10\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"\x00\x00\x00\x20ftypM4A "])
def test_garbage_after_valid_magic(magic: bytes) -> None:
    garbage = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match="truncated or corrupt|no audio stream") as excinfo:
        decode(magic + garbage)
    exact_type(excinfo, InputError)


def test_video_without_audio_has_no_audio_stream() -> None:
    mp4 = encode_video("mp4", "libx264", frames=4)
    with pytest.raises(InputError, match=r"no audio stream \(it holds video \(h264\)\)") as excinfo:
        decode(mp4, "video/mp4")
    exact_type(excinfo, InputError)


def test_unknown_codec_is_unsupported(wav: bytes) -> None:
    patched = bytearray(wav)
    patched[20:22] = struct.pack("<H", 0x7777)  # WAVE format tag no decoder knows
    with pytest.raises(UnsupportedMediaType, match="codec"):
        decode(bytes(patched))


@pytest.mark.parametrize("rate", [500_000, 2_000_000])
def test_absurd_sample_rate(wav: bytes, rate: int) -> None:
    patched = bytearray(wav)
    patched[24:28] = struct.pack("<I", rate)  # fmt chunk: sample rate
    with pytest.raises(InputError, match="sample rate") as excinfo:
        decode(bytes(patched))
    exact_type(excinfo, InputError)


def test_too_long_by_the_header(wav: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match=r"0\.50 s long according to its header, over the limit of 0\.25 s"):
        decode(wav, max_duration_s=0.25)


@pytest.mark.parametrize("claim", [None, 0.1])
def test_too_long_while_decoding_when_the_header_is_silent_or_lies(monkeypatch, wav: bytes, claim) -> None:
    import mmserve.plugins.media.audio as audio_module

    monkeypatch.setattr(audio_module, "header_duration_s", lambda container, stream: claim)
    with pytest.raises(PayloadTooLarge, match=r"at least .* s long, over the limit of 0\.25 s"):
        decode(wav, max_duration_s=0.25)
    assert len(decode(wav, max_duration_s=1.0)) == TARGET // 2  # the same file under a looser limit


@pytest.mark.parametrize(
    ("fmt", "codec", "rate"), [("mp3", "libmp3lame", 8000), ("ipod", "aac", 8000), ("ogg", "vorbis", 8000)]
)
def test_damaged_uploads_never_escape_as_other_errors(fmt: str, codec: str, rate: int) -> None:
    """Whatever FFmpeg makes of damaged bytes, the caller sees a decoded waveform or an InputError."""
    data = encode_audio(fmt, codec, stereo_sine(rate), rate)
    refused = 0
    for damaged in mutations(data, 30, seed=len(fmt)):
        try:
            decode(damaged)
        except InputError:
            refused += 1
    assert refused > 0  # the damage is real: some of it must be refused
