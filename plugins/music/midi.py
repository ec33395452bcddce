"""MIDI in and out: any .mid file -> piano-roll time steps at a chosen resolution, a folder of
them -> pieces, and pieces -> MIDI bytes (pretty_midi).

A step holds every pitch sounding at its start time (sampled at `steps_per_beat` per beat of
the file's first tempo), like the JSB files: a held note repeats in every step it spans.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmserve.plugins.music.tokens import HIGHEST_PITCH, LOWEST_PITCH, Piece, normalise_step


class MidiError(ValueError):
    """A file that is not a readable MIDI file."""


def _parse(data: bytes):
    import pretty_midi

    try:
        return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as error:  # mido/pretty_midi raise many types for corrupt files
        raise MidiError(f"not a readable MIDI file: {type(error).__name__}: {error}") from None


def midi_bytes_to_piece(data: bytes, steps_per_beat: int = 1, max_steps: int | None = None) -> Piece:
    """Steps of the sounding non-drum pitches in 21..108, `steps_per_beat` per quarter note.

    Raises MidiError for an unreadable file; returns [] for a file with no notes. With
    `max_steps`, raises MidiError when the piece is longer (checked before the roll is built).
    """
    assert steps_per_beat >= 1, f"steps_per_beat must be >= 1, got {steps_per_beat}"
    midi = _parse(data)
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        return []
    _, tempi = midi.get_tempo_changes()
    tempo = float(tempi[0]) if len(tempi) else 120.0
    step_seconds = 60.0 / tempo / steps_per_beat
    start = min(n.start for n in notes)
    end = max(n.end for n in notes)
    steps = max(int(round((end - start) / step_seconds)), 1)
    if max_steps is not None and steps > max_steps:
        raise MidiError(f"the MIDI file is {steps} steps long; the limit is {max_steps}")
    piece: Piece = [[] for _ in range(steps)]
    for note in notes:
        if not LOWEST_PITCH <= note.pitch <= HIGHEST_PITCH:
            continue  # outside the piano: not representable
        first = int(round((note.start - start) / step_seconds))
        last = max(int(round((note.end - start) / step_seconds)), first + 1)  # every note sounds >= 1 step
        for t in range(first, min(last, steps)):
            piece[t].append(note.pitch)
    return [normalise_step(step) for step in piece]


def load_midi_folder(folder: Path, steps_per_beat: int = 1, recursive: bool = True) -> dict[str, Piece]:
    """Every .mid/.midi file under `folder` -> {relative path: piece}; files with no notes are
    skipped, unreadable ones raise MidiError naming the file."""
    folder = Path(folder)
    assert folder.is_dir(), f"{folder} is not a folder"
    out: dict[str, Piece] = {}
    for path in sorted(_midi_files(folder, recursive)):
        try:
            piece = midi_bytes_to_piece(path.read_bytes(), steps_per_beat)
        except MidiError as error:
            raise MidiError(f"{path}: {error}") from None
        if piece:
            out[str(path.relative_to(folder))] = piece
    return out


def _midi_files(folder: Path, recursive: bool) -> Iterator[Path]:
    pattern = "**/*" if recursive else "*"
    for path in folder.glob(pattern):
        if path.is_file() and path.suffix.lower() in (".mid", ".midi"):
            yield path


def piece_to_midi_bytes(
    piece: Sequence[Sequence[int]], tempo: float = 100.0, steps_per_beat: int = 1, program: int = 0, velocity: int = 80
) -> bytes:
    """A standard MIDI file of the piece; a pitch held in consecutive steps is one long note."""
    import pretty_midi

    assert tempo > 0 and steps_per_beat >= 1, f"bad tempo {tempo} or steps_per_beat {steps_per_beat}"
    step_seconds = 60.0 / tempo / steps_per_beat
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    instrument = pretty_midi.Instrument(program=program)
    open_notes: dict[int, int] = {}  # pitch -> step it started
    steps = [set(normalise_step(step)) for step in piece] + [set()]
    for t, step in enumerate(steps):
        for pitch in sorted(set(open_notes) - step):
            begin = open_notes.pop(pitch)
            instrument.notes.append(pretty_midi.Note(velocity, pitch, begin * step_seconds, t * step_seconds))
        for pitch in sorted(step - set(open_notes)):
            open_notes[pitch] = t
    midi.instruments.append(instrument)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()
