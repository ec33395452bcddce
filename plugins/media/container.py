"""PyAV plumbing shared by the audio and video decoders: the byte checks, a safe `av.open`,
the header duration, and one place that maps FFmpeg failures to the plugin errors.

FFmpeg raises many exception types (`av.error.*`, which subclass both `av.FFmpegError` and
the matching builtin, plus plain `ValueError`/`OSError` from PyAV itself); a client must
never see any of them as a 500. `ffmpeg_errors` turns each into InputError (400, truncated
or corrupt), UnsupportedMediaType (415, a codec FFmpeg cannot decode) or PayloadTooLarge
(413, out of memory).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import av
import av.container
import av.stream

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.media.image import GENERIC_CONTENT_TYPES, _base_type, describe_bytes

MediaKind = Literal["audio", "video"]

# The only demuxers FFmpeg may pick. Without a whitelist it would happily probe playlists
# (HLS, concat, SDP) that open further URLs, or image pipes and subtitle formats that only
# confuse the error messages. One list for both kinds, so audio sent to the video decoder
# opens and is then refused as "no video stream" (a clearer message than "bad format").
DEMUXERS = ("wav", "w64", "aiff", "caf", "flac", "ogg", "mp3", "aac", "matroska", "mov", "avi", "gif", "mpegts", "flv")

# Leading bytes of the containers above: a file that starts like one of them but fails to
# open is truncated or corrupt (400); one that does not is simply not audio/video (415).
_MEDIA_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"RIFF"),  # WAV, AVI
    (0, b"RF64"),
    (0, b"FORM"),  # AIFF
    (0, b"caff"),
    (0, b"fLaC"),
    (0, b"OggS"),
    (0, b"ID3"),  # MP3 with a tag
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: Matroska / WebM
    (4, b"ftyp"),  # MP4 / M4A / MOV
    (4, b"moov"),
    (4, b"mdat"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"FLV"),
)
_MPEG_AUDIO_SYNC = 0xFFE0  # 11 set bits: an MP3 or ADTS-AAC frame header

_EXPECTED = {
    "audio": "audio (WAV, FLAC, OGG, MP3, WebM or M4A)",
    "video": "a video (MP4, WebM, AVI or animated GIF)",
}
# Declared types that may carry the kind besides "<kind>/*": audio often arrives as
# video/webm or video/mp4 (a container without pictures), GIF is an image type.
_EXTRA_TYPES = {"audio": ("video/", "application/ogg"), "video": ("image/gif", "application/ogg")}


def check_media_bytes(data: bytes, content_type: str | None, kind: MediaKind, max_upload_bytes: int) -> None:
    """The checks that need no decoding: empty, too many bytes, a declared type of another kind.

    Raises InputError (empty), PayloadTooLarge (over `max_upload_bytes`) or
    UnsupportedMediaType (declared type is neither `kind`/* nor generic).
    """
    if not data:
        raise InputError(f"the request body is empty: expected {_EXPECTED[kind]}")
    if len(data) > max_upload_bytes:
        raise PayloadTooLarge(f"the upload is {len(data)} bytes, over the limit of {max_upload_bytes} bytes")
    declared = _base_type(content_type)
    if declared in GENERIC_CONTENT_TYPES or declared.startswith(f"{kind}/"):
        return
    if any(declared.startswith(prefix) for prefix in _EXTRA_TYPES[kind]):
        return
    raise UnsupportedMediaType(f"content type {declared!r} is not supported; send {_EXPECTED[kind]}")


def looks_like_media(data: bytes) -> bool:
    """Whether the leading bytes announce one of the containers in DEMUXERS."""
    if any(data[offset : offset + len(magic)] == magic for offset, magic in _MEDIA_MAGIC):
        return True
    return len(data) >= 2 and (int.from_bytes(data[:2], "big") & _MPEG_AUDIO_SYNC) == _MPEG_AUDIO_SYNC


def open_container(data: bytes, kind: MediaKind) -> av.container.InputContainer:
    """Open checked bytes with PyAV, reading only from memory and only the DEMUXERS."""
    try:
        return av.open(
            io.BytesIO(data),
            mode="r",
            container_options={"format_whitelist": ",".join(DEMUXERS)},
            metadata_errors="ignore",  # a bad tag must not fail the request
        )
    except (av.FFmpegError, OSError, ValueError, EOFError) as error:
        if looks_like_media(data):
            raise InputError(f"the {kind} is truncated or corrupt: FFmpeg cannot read its header ({error})") from error
        raise UnsupportedMediaType(
            f"the upload is {describe_bytes(data)}, not {_EXPECTED[kind]} that this server can read"
        ) from error


@contextmanager
def ffmpeg_errors(kind: MediaKind) -> Iterator[None]:
    """Map every failure while demuxing/decoding to a plugin error; plugin errors pass through."""
    try:
        yield
    except InputError:
        raise
    except (av.error.DecoderNotFoundError, av.error.PatchWelcomeError, av.error.NotImplementedError) as error:
        raise UnsupportedMediaType(f"the {kind} uses a codec or feature this server cannot decode ({error})") from error
    except MemoryError as error:  # av.error.MemoryError (ENOMEM) is a MemoryError too
        raise PayloadTooLarge(f"the {kind} is too large to decode ({error})") from error
    except (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError, IndexError) as error:
        raise InputError(f"the {kind} is truncated or corrupt: {error}") from error


def require_decoder(stream: av.stream.Stream, kind: MediaKind) -> None:
    """415 when FFmpeg found the stream but has no decoder for its codec (PyAV leaves no context)."""
    if stream.codec_context is None:
        tag = getattr(stream, "codec_tag", "") or "unknown"
        raise UnsupportedMediaType(f"the {kind} stream's codec (tag {tag!r}) is not supported by this server")


def header_duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Duration the headers claim, in seconds, or None when they claim nothing.

    A claim only: headers can lie or be estimated from the bit rate, so callers also count
    what they decode.
    """
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def describe_streams(container: av.container.InputContainer) -> str:
    """'audio (aac), video (h264)' — for 'no audio stream' messages."""
    parts = [
        f"{stream.type} ({stream.codec_context.name if stream.codec_context else 'unknown codec'})"
        for stream in container.streams
    ]
    return ", ".join(parts) if parts else "no streams at all"


# Container formats whose headers state the duration exactly (a sample count, an index, a
# Duration element), so decoding much less than that means the upload was cut short. MP3 and
# ADTS durations are often estimated from the bit rate, so they are not trusted for this.
EXACT_DURATION_FORMATS = ("wav", "w64", "aiff", "caf", "flac", "matroska", "mov", "avi")


def check_not_truncated(
    container: av.container.InputContainer, stream: av.stream.Stream, decoded_s: float, kind: MediaKind
) -> None:
    """InputError when an exact header claims clearly more of this stream than was decoded.

    Only the stream's own duration counts, or the container's when the stream is alone in it:
    a container's duration is its longest stream's, and audio may well end before video.
    """
    names = container.format.name.split(",")
    if not any(name in EXACT_DURATION_FORMATS for name in names):
        return
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        claimed_s = float(stream.duration * stream.time_base)
    elif len(container.streams) == 1 and container.duration is not None and container.duration > 0:
        claimed_s = container.duration / av.time_base
    else:
        return
    # Slack for encoder priming/padding (Opus pre-skip is 6.5 ms, an AAC frame 23 ms at 44.1 kHz).
    if decoded_s < claimed_s * 0.98 - 0.03:
        raise InputError(
            f"the {kind} is truncated or corrupt: its header says {claimed_s:.3f} s but only "
            f"{decoded_s:.3f} s could be decoded"
        )


def check_riff_size(data: bytes, kind: MediaKind) -> None:
    """InputError when a RIFF file (WAV, AVI) is shorter than its own size field says.

    FFmpeg clamps a WAV's data size to the bytes it has, so its header duration cannot
    reveal a cut-off upload; the RIFF size field can. 0 and 0xFFFFFFFF mean "unknown"
    (written by streaming encoders) and are let through.
    """
    if len(data) < 8 or data[:4] not in (b"RIFF", b"RF64"):
        return
    size = int.from_bytes(data[4:8], "little")
    if data[:4] == b"RF64" or size in (0, 0xFFFFFFFF):
        return  # RF64 keeps the real size elsewhere
    if size + 8 > len(data):
        raise InputError(
            f"the {kind} is truncated or corrupt: its RIFF header says {size + 8} bytes but the upload has {len(data)}"
        )
