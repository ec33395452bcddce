"""Request bytes -> a piece of music: a MIDI file, or JSON pitch lists, validated with limits.

JSON is a list of time steps, each a list of MIDI pitches (an int is one pitch, [] or null a
rest), as in the JSB files; or an object {"notes": <that list>}. An empty body is no primer.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from mmserve.plugins.errors import InputError, PayloadTooLarge, UnprocessableInput, UnsupportedMediaType
from mmserve.plugins.music.midi import MidiError, midi_bytes_to_piece
from mmserve.plugins.music.tokens import HIGHEST_PITCH, LOWEST_PITCH, MAX_NOTES_PER_STEP, Piece

MIDI_TYPES = ("audio/midi", "audio/x-midi", "audio/mid", "application/x-midi")
JSON_TYPES = ("application/json", "text/json")
CONTENT_TYPES = MIDI_TYPES + JSON_TYPES
MAX_INPUT_STEPS = 512  # a primer, a melody or a piece to score
MAX_GENERATED_STEPS = 512  # the task's default output limit, in time steps (tasks.music.max_output_length overrides)


class MusicOptions(BaseModel):
    """The music task's own request parameters (validated by the server: 422 on bad values)."""

    mode: Literal["continue", "harmonize", "score"] = Field("continue", description="continue | harmonize | score")
    length: int = Field(
        16, ge=1, description="How much to generate (continue mode), in `length_unit`s; at most the task's output "
        f"limit (tasks.music.max_output_length; by default {MAX_GENERATED_STEPS} steps)"
    )
    length_unit: Literal["steps", "beats"] = Field("steps", description="steps (time steps) | beats")
    tempo: float = Field(100.0, ge=20.0, le=300.0, description="Beats per minute for times, MIDI and audio")
    format: Literal["json", "midi", "wav", "png"] = Field("json", description="json | midi | wav | png")


def _is_json(data: bytes, content_type: str | None) -> bool:
    if content_type in JSON_TYPES:
        return True
    return content_type in (None, "", "text/plain", "application/octet-stream") and data.lstrip()[:1] in (b"[", b"{")


def parse_piece(data: bytes, content_type: str | None, steps_per_beat: int = 1) -> Piece:
    """The input's time steps (an empty list for an empty body). Raises InputError (400) for a
    corrupt file or one with no notes, PayloadTooLarge (413) past MAX_INPUT_STEPS,
    UnprocessableInput (422) for pitches outside 21..108, UnsupportedMediaType (415)."""
    content_type = (content_type or "").split(";")[0].strip().lower() or None
    if not data.strip():
        return []
    if _is_json(data, content_type):
        return _json_piece(data)
    if content_type not in MIDI_TYPES and content_type not in (None, "application/octet-stream"):
        raise UnsupportedMediaType(f"unsupported content type {content_type!r}; send MIDI ({', '.join(MIDI_TYPES)}) or JSON")
    try:
        piece = midi_bytes_to_piece(data, steps_per_beat, max_steps=MAX_INPUT_STEPS)
    except MidiError as error:
        if "limit" in str(error):
            raise PayloadTooLarge(f"{error} (MAX_INPUT_STEPS)") from None
        raise InputError(f"corrupt MIDI: {error}") from None
    if not piece or not any(piece):
        raise InputError("the MIDI file has no notes in the piano range 21..108")
    return piece


def _json_piece(data: bytes) -> Piece:
    try:
        body: Any = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"the notes are not valid JSON: {error}") from None
    if isinstance(body, dict):
        body = body.get("notes")
    if not isinstance(body, list):
        raise InputError('JSON notes must be a list of time steps, or {"notes": [...]}')
    if len(body) > MAX_INPUT_STEPS:
        raise PayloadTooLarge(f"{len(body)} time steps is over the limit of {MAX_INPUT_STEPS}")
    piece: Piece = []
    for t, step in enumerate(body):
        pitches = [] if step is None else [step] if isinstance(step, int) else step
        if not isinstance(pitches, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pitches):
            raise InputError(f"time step {t} must be a list of integer MIDI pitches, got {step!r}")
        if len(pitches) > MAX_NOTES_PER_STEP:
            raise PayloadTooLarge(f"time step {t} has {len(pitches)} notes; the limit is {MAX_NOTES_PER_STEP}")
        bad = [p for p in pitches if not LOWEST_PITCH <= p <= HIGHEST_PITCH]
        if bad:
            raise UnprocessableInput(f"time step {t} has pitches {bad} outside the piano range {LOWEST_PITCH}..{HIGHEST_PITCH}")
        piece.append(sorted(set(pitches)))
    return piece
