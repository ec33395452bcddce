"""Audio bytes -> mono float32 waveform at a requested sample rate, with limits.

Any container FFmpeg reads through PyAV (WAV, FLAC, OGG/Vorbis/Opus, MP3, WebM, M4A/AAC).
Order: byte checks, open (memory only, whitelisted demuxers), the header's sample rate and
duration, then the decode, which counts samples and stops as soon as the clip is over
`max_duration_s` (headers can lie or be missing). Resampling is torchaudio's sinc resampler.
"""

from __future__ import annotations

import math

import av
import numpy as np
import torch
import torchaudio.functional

from mmserve.plugins.errors import InputError, PayloadTooLarge
from mmserve.plugins.media.container import (
    check_media_bytes,
    check_not_truncated,
    check_riff_size,
    describe_streams,
    ffmpeg_errors,
    header_duration_s,
    open_container,
    require_decoder,
)

MAX_SAMPLE_RATE = 384_000  # the highest rate real audio uses; anything above is a bogus header

# torchaudio builds a [new/g, orig/g + taps] kernel (g = gcd of the rates): fine for the usual
# rates (44100 -> 16000 is 441/160), megabytes-to-gigabytes for odd ones (44101 -> 16000).
# Above this reduced size FFmpeg's resampler does the job instead.
_MAX_REDUCED_RATE = 1024


def _check_rate(rate: int) -> None:
    if rate <= 0 or rate > MAX_SAMPLE_RATE:
        raise InputError(f"the audio claims a sample rate of {rate} Hz; expected between 1 and {MAX_SAMPLE_RATE} Hz")


def _check_wav_header(data: bytes) -> None:
    """Name what is wrong with a WAV's format chunk (0 channels, a sample rate of 0 or of
    gigahertz) before FFmpeg refuses the file with a generic 'cannot read its header'."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if kind == b"fmt ":
            if size < 16 or at + 24 > len(data):
                raise InputError("the audio is truncated or corrupt: its WAV format chunk is too short")
            channels = int.from_bytes(data[at + 10 : at + 12], "little")
            rate = int.from_bytes(data[at + 12 : at + 16], "little")
            if channels == 0:
                raise InputError("the audio is truncated or corrupt: its WAV header declares 0 channels")
            if rate <= 0 or rate > MAX_SAMPLE_RATE:
                raise InputError(f"the audio is truncated or corrupt: its WAV header claims a sample rate of {rate} Hz; "
                                 f"expected between 1 and {MAX_SAMPLE_RATE} Hz")  # fmt: skip
            return
        at += 8 + size + (size & 1)  # chunks are word-aligned


def _too_long(seconds: float, max_duration_s: float, at_least: bool = False, header: bool = False) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the audio is {'at least ' if at_least else ''}{seconds:.2f} s long"
        f"{' according to its header' if header else ''}, over the limit of {max_duration_s:g} s"
    )


def decode_audio(
    data: bytes,
    content_type: str | None,
    *,
    sample_rate: int,
    max_upload_bytes: int,
    max_duration_s: float,
) -> torch.Tensor:
    """Audio bytes -> mono float32 waveform [N] in [-1, 1] at `sample_rate` Hz.

    Channels are averaged (downmix). Raises InputError (empty, truncated or corrupt, no audio
    stream, absurd sample rate), UnsupportedMediaType (not audio, unknown codec) or
    PayloadTooLarge (too many bytes, longer than `max_duration_s`).
    """
    assert sample_rate > 0, f"sample_rate must be positive, got {sample_rate}"
    check_media_bytes(data, content_type, "audio", max_upload_bytes)
    _check_wav_header(data)
    container = open_container(data, "audio")
    with container, ffmpeg_errors("audio"):
        if not container.streams.audio:
            raise InputError(f"the upload has no audio stream (it holds {describe_streams(container)})")
        check_riff_size(data, "audio")
        stream = container.streams.audio[0]
        require_decoder(stream, "audio")
        if stream.sample_rate:  # 0 = not in the header; then the first frame says
            _check_rate(stream.sample_rate)
        claimed = header_duration_s(container, stream)
        if claimed is not None and claimed > max_duration_s:
            raise _too_long(claimed, max_duration_s, header=True)
        source_rate, chunks = _decode_stream(container, stream, max_duration_s)
        decoded_s = sum(chunk.shape[1] for chunk in chunks) / source_rate if source_rate else 0.0
        check_not_truncated(container, stream, decoded_s, "audio")
    if not chunks:
        raise InputError("the audio is truncated or corrupt: it holds no decodable samples")
    waveform = torch.from_numpy(np.concatenate(chunks, axis=1)).mean(dim=0)  # [C, N] -> [N]
    waveform = _resample(waveform, source_rate, sample_rate)
    return waveform.clamp_(-1.0, 1.0).contiguous()


def _decode_stream(container: av.container.InputContainer, stream: av.AudioStream, max_duration_s: float):
    """Decode to float planar chunks [C, n] at the source rate; stop once over the duration."""
    # Converts any sample format (u8, s16, s32, flt, dbl, planar or packed) to float planar;
    # layout and rate stay as they are (None = the input's).
    converter = av.AudioResampler(format="fltp")
    chunks: list[np.ndarray] = []
    source_rate = 0
    samples = 0
    for frame in container.decode(stream):
        if source_rate == 0:
            source_rate = int(frame.sample_rate)
            _check_rate(source_rate)
            max_samples = math.floor(max_duration_s * source_rate)
        elif frame.sample_rate != source_rate:
            raise InputError(f"the audio changes sample rate mid-stream ({source_rate} Hz to {frame.sample_rate} Hz)")
        samples += frame.samples
        if samples > max_samples:
            raise _too_long(samples / source_rate, max_duration_s, at_least=True)
        for converted in converter.resample(frame):
            chunks.append(converted.to_ndarray().astype(np.float32, copy=False))  # [C, n]
    if source_rate:
        for converted in converter.resample(None):  # flush
            chunks.append(converted.to_ndarray().astype(np.float32, copy=False))
    return source_rate, chunks


def _resample(waveform: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """[N] at source_rate -> [M] at target_rate."""
    if source_rate == target_rate:
        return waveform
    g = math.gcd(source_rate, target_rate)
    if max(source_rate // g, target_rate // g) <= _MAX_REDUCED_RATE:
        return torchaudio.functional.resample(waveform, source_rate, target_rate)
    # Odd rate pair: FFmpeg's resampler handles any ratio in constant memory.
    frame = av.AudioFrame.from_ndarray(waveform.numpy()[None, :], format="fltp", layout="mono")
    frame.sample_rate = source_rate
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=target_rate)
    parts = [out.to_ndarray()[0] for out in [*resampler.resample(frame), *resampler.resample(None)]]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))


def audio_duration_s(data: bytes, content_type: str | None, *, max_upload_bytes: int) -> float | None:
    """The duration the audio's headers claim, in seconds, without decoding (None: not stated).

    For planning and cost estimates only; `decode_audio` enforces the real limit.
    """
    check_media_bytes(data, content_type, "audio", max_upload_bytes)
    container = open_container(data, "audio")
    with container, ffmpeg_errors("audio"):
        if not container.streams.audio:
            raise InputError(f"the upload has no audio stream (it holds {describe_streams(container)})")
        return header_duration_s(container, container.streams.audio[0])
