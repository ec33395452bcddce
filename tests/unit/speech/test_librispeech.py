"""The LibriSpeech-format loader on a tiny corpus this test writes (FLAC through PyAV)."""

from __future__ import annotations

import numpy as np
import pytest

from mmserve.plugins.speech.librispeech import LibriSpeechClips, read_librispeech
from tests.unit.media_fixtures import encode_audio, sine


def _write_corpus(root):
    lines = {("19", "198"): ["THE SUN ROSE, EARLY", "IT'S A FINE-DAY"], ("26", "495"): ["HELLO THERE"]}
    expected = {}
    for (speaker, chapter), texts in lines.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        rows = []
        for n, text in enumerate(texts):
            uid = f"{speaker}-{chapter}-{n:04d}"
            seconds = 0.25 * (n + 1)
            tone = sine(22050, seconds, 300.0 + 100 * n, 0.4)
            (folder / f"{uid}.flac").write_bytes(encode_audio("flac", "flac", np.stack([tone, tone]), 22050))
            rows.append(f"{uid} {text}")
            expected[uid] = (text, seconds)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(rows) + "\n")
    return expected


def test_reads_speakers_chapters_flac_and_transcripts(tmp_path):
    expected = _write_corpus(tmp_path)
    (tmp_path / "19" / "198" / "19-198-0009.flac").unlink(missing_ok=True)  # nothing to do: absent ids are skipped
    utterances = read_librispeech(tmp_path)
    assert [u.id for u in utterances] == sorted(expected)
    assert {u.id: u.text for u in utterances}["19-198-0001"] == "it's a fine day"
    assert {u.speaker for u in utterances} == {"19", "26"}
    clips = LibriSpeechClips(tmp_path)
    for i, u in enumerate(clips.utterances):
        wave = clips.wave(i)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert len(wave) / 16000 == pytest.approx(expected[u.id][1], abs=0.01)
        assert clips.text(i) == u.text


def test_transcript_lines_without_audio_are_skipped(tmp_path):
    _write_corpus(tmp_path)
    (tmp_path / "26" / "495" / "26-495-0000.flac").unlink()
    assert [u.id for u in read_librispeech(tmp_path)] == ["19-198-0000", "19-198-0001"]
    with pytest.raises(FileNotFoundError):
        read_librispeech(tmp_path / "missing")
