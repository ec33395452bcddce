"""Corrupt audio, video and MIDI for the speech, action and music routes (and the OpenAI
transcription route), built at run time from small valid files (the `wave` module, PyAV,
Pillow, the music plugin's MIDI writer) and byte-level edits of them.

Each modality has: empty, truncated at several points, valid magic followed by garbage, a
wrong declared type, "bombs" (headers declaring hours of length, absurd sample or frame
rates, absurd sizes) and zero-length streams.
"""

from __future__ import annotations

import io
import json
import struct

import av
import numpy as np
from PIL import Image

from tests.corpus.generate import MAX_UPLOAD_BYTES, Case, _envelope, _image

GARBAGE = bytes(np.random.default_rng(11).integers(0, 256, 600, dtype=np.uint8))
WAV_RATE = 16000


# ----- audio ------------------------------------------------------------------------------------


def wav(rate: int = WAV_RATE, channels: int = 1, frames: int = WAV_RATE, data_size: int | None = None,
        riff_size: int | None = None, bits: int = 16) -> bytes:  # fmt: skip
    """A PCM WAV of `frames` samples of a tone; `data_size` / `riff_size` override what the header declares."""
    level = 8000 if bits == 16 else 40
    tone = np.sin(2 * np.pi * 440 * np.arange(frames) / WAV_RATE) * level
    pcm = tone.astype("<i2") if bits == 16 else (tone + 128).astype(np.uint8)
    samples = np.repeat(pcm, max(channels, 1)).tobytes()
    block = max(channels, 1) * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, min(rate * block, 0xFFFFFFFF), block, bits)
    declared = len(samples) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + samples
    size = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", size) + body


def audio_cases() -> list[Case]:
    good = wav()
    hours = 10 * 3600 * WAV_RATE * 2  # 10 hours of 16 kHz 16-bit mono
    cases = [
        ("empty", b"", "audio/wav", (400,), "empty"),
        ("wav-header-only", good[:44], "audio/wav", (400,), "truncated"),
        ("wav-magic-only", good[:12], "audio/wav", (400,), "truncated"),
        ("wav-magic-then-garbage", good[:12] + GARBAGE, "audio/wav", (400,), "corrupt"),
        ("ogg-magic-then-garbage", b"OggS" + GARBAGE, "audio/ogg", (400,), "corrupt"),
        ("flac-magic-then-garbage", b"fLaC" + GARBAGE, "audio/flac", (400,), "corrupt"),
        ("mp3-id3-then-garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00" + GARBAGE, "audio/mpeg", (400,), "corrupt"),
        ("wav-declared-as-png", good, "image/png", (415,), "image/png"),
        ("png-declared-as-wav", _image("PNG"), "audio/wav", (415,), "not audio"),
        ("text-declared-as-wav", b"these words are not audio at all", "audio/wav", (415,), "not audio"),
        ("wav-declares-10-hours", wav(data_size=hours, riff_size=hours + 36), "audio/wav", (400,), "riff header says"),
        # Sizes "unknown" (streaming WAV): only counting the decoded samples finds 70 s in 70 KB.
        ("wav-unknown-size-70-s", wav(rate=1000, bits=8, frames=70_000, data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF),
         "audio/wav", (413,), "over the limit of 60 s"),
        ("wav-rate-zero", wav(rate=0), "audio/wav", (400,), "sample rate of 0 hz"),
        ("wav-rate-4-ghz", wav(rate=4_000_000_000), "audio/wav", (400,), "sample rate of 4000000000 hz"),
        ("wav-rate-1-hz", wav(rate=1, frames=8000), "audio/wav", (413,), "according to its header"),
        ("wav-zero-channels", wav(channels=0), "audio/wav", (400,), "0 channels"),
        ("wav-zero-length-stream", wav(frames=0), "audio/wav", (400,), "no decodable samples"),
        ("over-upload-limit", good[:44] + b"\x00" * (MAX_UPLOAD_BYTES + 1), "audio/wav", (413,), "over the limit"),
    ]
    for fraction in (0.1, 0.5, 0.9):
        cut = good[: int(len(good) * fraction)]
        cases.append((f"wav-truncated-{int(fraction * 100)}pct", cut, "audio/wav", (400,), "truncated"))
    out = [Case(f"audio/{n}", "audio", "/v1/speech", b, {"content-type": ct}, s, f) for n, b, ct, s, f in cases]
    # The OpenAI-compatible route: the same files as multipart uploads with a model field.
    openai = {"model": "whisper-1"}
    for name, body, status, fragment in (
        ("openai-empty", b"", (400,), "empty"),
        ("openai-magic-then-garbage", good[:12] + GARBAGE, (400,), "corrupt"),
        ("openai-declares-10-hours", wav(data_size=hours, riff_size=hours + 36), (400,), "riff header says"),
        ("openai-zero-length-stream", wav(frames=0), (400,), "no decodable samples"),
    ):
        out.append(Case(f"audio/{name}", "audio", "/v1/audio/transcriptions", body, {}, status, fragment,
                        multipart={"file": "audio/wav"}, fields=openai))  # fmt: skip
    return out


# ----- video ------------------------------------------------------------------------------------


def video(fmt: str = "mp4", codec: str = "mpeg4", frames: int = 16, fps: int = 8, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small synthetic clip (`frames` grey levels); frames=0 gives a container with an empty video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), i * 12 % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _rewrite_box(data: bytes, box: bytes, edit) -> bytes:
    """Apply `edit(bytearray, offset_of_box_payload)` to every MP4 box of type `box`."""
    out = bytearray(data)
    start = 0
    while (at := out.find(box, start)) > 0:
        edit(out, at + 4)
        start = at + 4
    return bytes(out)


def _mp4_frame_durations(data: bytes, seconds: float, frames: int) -> bytes:
    """Rewrite the sample table (stts, one entry) so `frames` frames last `seconds` in all."""

    def edit(out: bytearray, payload: int) -> None:
        timescale = _mdhd_timescale(out)
        struct.pack_into(">II", out, payload + 8, frames, max(1, round(seconds * timescale / frames)))

    return _rewrite_box(data, b"stts", edit)


def _mp4_timescale(data: bytes, timescale: int) -> bytes:
    """Rewrite the media timescale: each frame keeps its duration in ticks, so frames last ages."""

    def edit(out: bytearray, payload: int) -> None:
        if out[payload] == 0:  # version 0 header (32-bit fields), as PyAV writes
            struct.pack_into(">I", out, payload + 12, timescale)

    return _rewrite_box(data, b"mdhd", edit)


def _mdhd_timescale(data: bytes | bytearray) -> int:
    at = bytes(data).find(b"mdhd") + 4
    return struct.unpack_from(">I", data, at + 12)[0]


def _mp4_no_samples(data: bytes) -> bytes:
    """A video stream whose sample tables list no samples: a zero-length stream."""

    def no_sizes(out: bytearray, payload: int) -> None:
        struct.pack_into(">I", out, payload + 8, 0)  # stsz sample_count

    def no_times(out: bytearray, payload: int) -> None:
        struct.pack_into(">I", out, payload + 4, 0)  # stts entry_count

    return _rewrite_box(_rewrite_box(data, b"stsz", no_sizes), b"stts", no_times)


def _gif_declaring(width: int, height: int) -> bytes:
    out = io.BytesIO()
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    data = bytearray(out.getvalue())
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen descriptor
    return bytes(data)


def video_cases() -> list[Case]:
    mp4, webm = video(), video("webm", "libvpx")
    cases = [
        ("empty", b"", "video/mp4", (400,), "empty"),
        ("mp4-magic-then-garbage", mp4[:12] + GARBAGE, "video/mp4", (400,), "corrupt"),
        ("webm-magic-then-garbage", webm[:4] + GARBAGE, "video/webm", (400,), "corrupt"),
        ("avi-magic-then-garbage", b"RIFF\x00\x10\x00\x00AVI " + GARBAGE, "video/x-msvideo", (400,), "no video stream"),
        ("gif-magic-then-garbage", b"GIF89a\x10\x00\x10\x00" + GARBAGE, "image/gif", (400,), "corrupt"),
        ("mp4-declared-as-png", mp4, "image/png", (415,), "image/png"),
        ("png-declared-as-mp4", _image("PNG"), "video/mp4", (415,), "not a video"),
        ("mp4-frames-lasting-hours", _mp4_frame_durations(mp4, 10 * 3600, 16), "video/mp4", (413,),
         "over the limit of 60 s"),
        ("mp4-frame-rate-absurdly-low", _mp4_timescale(mp4, 1), "video/mp4", (413,), "long"),
        ("mp4-frame-rate-absurdly-high", _mp4_frame_durations(mp4, 1e-6, 16), "video/mp4", (400,),
         "frames per second"),
        ("gif-60000x60000", _gif_declaring(60000, 60000), "image/gif", (413,), "pixels per frame"),
        ("mp4-zero-length-stream", _mp4_no_samples(mp4), "video/mp4", (400,), "no"),
        ("over-upload-limit", mp4[:12] + b"\x00" * (MAX_UPLOAD_BYTES + 1), "video/mp4", (413,), "over the limit"),
    ]
    for fmt, data, mime in (("mp4", mp4, "video/mp4"), ("webm", webm, "video/webm")):
        for fraction in (0.1, 0.5, 0.9):
            cut = data[: int(len(data) * fraction)]
            cases.append((f"{fmt}-truncated-{int(fraction * 100)}pct", cut, mime, (400,), "corrupt"))
    return [Case(f"video/{n}", "video", "/v1/action", b, {"content-type": ct}, s, f) for n, b, ct, s, f in cases]


# ----- MIDI ------------------------------------------------------------------------------------


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi(events: bytes, tracks: int = 1, division: int = 480, declared_tracks: int | None = None) -> bytes:
    """A format-1 MIDI file with `tracks` copies of one track holding `events` (end-of-track added)."""
    track = events + b"\x00\xff\x2f\x00"
    header = struct.pack(">HHH", 1, tracks if declared_tracks is None else declared_tracks, division)
    return b"MThd" + struct.pack(">I", 6) + header + (b"MTrk" + struct.pack(">I", len(track)) + track) * tracks


def _notes(count: int = 8, gap: int = 480) -> bytes:
    events = b""
    for i in range(count):
        pitch = 60 + i % 12
        events += b"\x00\x90" + bytes([pitch, 90]) + _vlq(gap) + b"\x80" + bytes([pitch, 0])
    return events


def midi_cases() -> list[Case]:
    good = midi(_notes())
    hours_tick = 10 * 3600 * 2 * 480  # ten hours at 120 bpm, 480 ticks per beat
    json_ct = "application/json"
    cases = [
        ("mthd-magic-then-garbage", good[:8] + GARBAGE, "audio/midi", (400,), "corrupt midi"),
        ("mthd-magic-only", good[:4], "audio/midi", (400,), "corrupt midi"),
        ("midi-declared-as-png", good, "image/png", (415,), "image/png"),
        ("png-declared-as-midi", _image("PNG"), "audio/midi", (400, 415), "midi"),
        ("midi-declared-as-json", good, json_ct, (400,), "json"),
        ("note-lasting-10-hours", midi(b"\x00\x90\x3c\x5a" + _vlq(hours_tick) + b"\x80\x3c\x00"), "audio/midi",
         (400, 413), "largest tick"),
        ("notes-hours-apart", midi(b"\x00\xff\x51\x03\x00\x00\x01" + _notes(4, gap=480 * 100_000)),
         "audio/midi", (400, 413), "largest tick"),
        ("tempo-1-microsecond-per-beat", midi(b"\x00\xff\x51\x03\x00\x00\x01" + _notes(600, gap=480)),
         "audio/midi", (400, 413), "limit"),
        ("declares-65535-tracks", midi(_notes(), declared_tracks=65535), "audio/midi", (400,), "corrupt midi"),
        ("division-zero", midi(_notes(), division=0), "audio/midi", (400,), "corrupt midi"),
        ("zero-length-track", midi(b"", tracks=1)[:-4].replace(b"MTrk\x00\x00\x00\x04", b"MTrk\x00\x00\x00\x00"),
         "audio/midi", (400,), "midi"),
        ("track-length-past-end", good[:18] + b"\xff\xff\xff\xff" + good[22:], "audio/midi", (400,), "corrupt midi"),
        ("no-notes", midi(b"\x00\xff\x51\x03\x07\xa1\x20"), "audio/midi", (400,), "no notes"),
        ("json-not-json", _envelope(b"[[60, 64"), json_ct, (400,), "not valid json"),
        ("json-pitch-nan", _envelope(b"[[60, NaN]]"), json_ct, (400,), "pitch"),
        ("json-pitch-out-of-range", _envelope(json.dumps([[60, 500]]).encode()), json_ct, (400, 422),
         "outside the piano range"),
        ("json-too-many-steps", _envelope(json.dumps([[60]] * 4000).encode()), json_ct, (413,), "limit"),
        ("over-upload-limit", good[:14] + b"\x00" * (MAX_UPLOAD_BYTES + 1), "audio/midi", (413,), "over the limit"),
    ]
    for fraction in (0.25, 0.5, 0.9):
        cut = good[: int(len(good) * fraction)]
        cases.append((f"midi-truncated-{int(fraction * 100)}pct", cut, "audio/midi", (400,), "corrupt midi"))
    return [Case(f"midi/{n}", "midi", "/v1/music", b, {"content-type": ct}, s, f) for n, b, ct, s, f in cases]


def media_cases() -> list[Case]:
    return audio_cases() + video_cases() + midi_cases()
