"""Tiny media files encoded on the fly with PyAV, for the media decoding tests.

Nothing is stored: each test builds the clip it needs (a sine tone, a moving square), so the
expected values (frequency, amplitude, square position, colours) are known exactly.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

# The encoders the fixtures use; a missing one skips its cases with the reason below.
AUDIO_ENCODERS = ("pcm_s16le", "flac", "vorbis", "libopus", "libmp3lame", "aac")
VIDEO_ENCODERS = ("libx264", "libvpx-vp9", "mjpeg", "mpeg4", "gif")


def require_encoder(name: str) -> None:
    """Skip the calling test when this PyAV build cannot encode `name`."""
    try:
        av.codec.Codec(name, "w")
    except Exception:
        pytest.skip(f"this PyAV/FFmpeg build has no {name!r} encoder, so that fixture cannot be made")


def sine(rate: int, seconds: float, freq: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_audio(fmt: str, codec: str, channels: np.ndarray, rate: int) -> bytes:
    """Float planar samples [C, N] (C = 1 or 2) -> bytes of container `fmt` with `codec`."""
    require_encoder(codec)
    layout = "stereo" if channels.shape[0] == 2 else "mono"
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":  # FFmpeg's native Vorbis encoder is flagged experimental
            stream.codec_context.options = {"strict": "experimental"}
        for start in range(0, channels.shape[1], 1024):
            chunk = np.ascontiguousarray(channels[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):  # PyAV converts to the encoder's sample format
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def stereo_sine(rate: int, seconds: float = 0.5, freq: float = 1000.0, amplitude: float = 0.5) -> np.ndarray:
    tone = sine(rate, seconds, freq, amplitude)
    return np.stack([tone, tone])  # [2, N]


# The moving square: blue background, a red 16x16 square moving 3 px right per frame.
HEIGHT, WIDTH, SQUARE, STEP, TOP = 48, 64, 16, 3, 16


def square_x(index: int) -> int:
    return (index * STEP) % (WIDTH - SQUARE)


def square_frame(index: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = (0, 0, 255)
    x = square_x(index)
    image[TOP : TOP + SQUARE, x : x + SQUARE] = (255, 0, 0)
    return image  # [H, W, 3] RGB


def encode_video(fmt: str, codec: str, frames: int = 20, rate: int = 10) -> bytes:
    """`frames` frames of the moving square at `rate` fps, 64x48."""
    require_encoder(codec)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = {"mjpeg": "yuvj420p", "gif": "rgb8"}.get(codec, "yuv420p")
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(square_frame(index), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """Seeded damage: cut short, bytes flipped, or a run overwritten with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        damaged = bytearray(data)
        kind = index % 3
        if kind == 0:
            damaged = damaged[: int(rng.integers(1, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 20))):
                damaged[int(rng.integers(len(damaged)))] = int(rng.integers(256))
        else:
            start, length = int(rng.integers(len(damaged))), int(rng.integers(1, 200))
            damaged[start : start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        out.append(bytes(damaged))
    return out
