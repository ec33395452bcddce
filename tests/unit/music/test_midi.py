"""The MIDI-folder loader on fixture files written here, and MIDI output."""

from __future__ import annotations

from pathlib import Path

import pretty_midi
import pytest

from mmserve.plugins.music.midi import MidiError, load_midi_folder, midi_bytes_to_piece, piece_to_midi_bytes


def _write(path: Path, notes: list[tuple[int, float, float]], tempo: float = 120.0, drums: bool = False) -> None:
    """notes: (pitch, start beat, end beat) at `tempo`."""
    beat = 60.0 / tempo
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    piano = pretty_midi.Instrument(program=0, is_drum=False)
    piano.notes = [pretty_midi.Note(90, p, s * beat, e * beat) for p, s, e in notes]
    midi.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes = [pretty_midi.Note(90, 36, 0.0, beat)]
        midi.instruments.append(kit)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))


def test_folder_loader_reads_every_midi_file_at_the_chosen_resolution(tmp_path: Path) -> None:
    # A C major chord for two beats, then D alone for one beat; a slower file in a sub-folder.
    _write(tmp_path / "a.mid", [(60, 0, 2), (64, 0, 2), (67, 0, 2), (62, 2, 3)], drums=True)
    _write(tmp_path / "sub" / "b.midi", [(72, 0, 1), (74, 1, 1.5)], tempo=60.0)
    (tmp_path / "notes.txt").write_text("not midi")
    _write(tmp_path / "empty.mid", [])
    pieces = load_midi_folder(tmp_path, steps_per_beat=1)
    assert sorted(pieces) == ["a.mid", "sub/b.midi"]  # no-note files are skipped, other files ignored
    assert pieces["a.mid"] == [[60, 64, 67], [60, 64, 67], [62]]  # drums left out
    assert pieces["sub/b.midi"] == [[72], [74]]  # a half-beat note still sounds one step
    finer = load_midi_folder(tmp_path, steps_per_beat=2)
    assert finer["a.mid"] == [[60, 64, 67]] * 4 + [[62]] * 2
    assert finer["sub/b.midi"] == [[72], [72], [74]]


def test_corrupt_and_too_long_files_raise_midi_error(tmp_path: Path) -> None:
    with pytest.raises(MidiError, match="not a readable MIDI"):
        midi_bytes_to_piece(b"MThd\x00\x00garbage")
    (tmp_path / "bad.mid").write_bytes(b"\x00" * 40)
    with pytest.raises(MidiError, match="bad.mid"):
        load_midi_folder(tmp_path)
    _write(tmp_path / "long" / "long.mid", [(60, 0, 100)])
    with pytest.raises(MidiError, match="limit is 50"):
        midi_bytes_to_piece((tmp_path / "long" / "long.mid").read_bytes(), max_steps=50)


def test_piece_to_midi_and_back_is_exact() -> None:
    piece = [[60, 64, 67], [60, 65], [], [59, 62, 67, 74], [59]]
    for steps_per_beat in (1, 4):
        data = piece_to_midi_bytes(piece, tempo=90.0, steps_per_beat=steps_per_beat)
        assert data[:4] == b"MThd"
        back = midi_bytes_to_piece(data, steps_per_beat)
        assert back == piece[: len(back)] and len(back) == len(piece)
