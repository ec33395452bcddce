"""A loader for LibriSpeech-format corpora, so the model can be trained on real speech.

Layout: <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt, one line per utterance
("<speaker>-<chapter>-<n> TRANSCRIPT"), beside <speaker>-<chapter>-<n>.flac files. Audio is
read through the shared PyAV decoder (any rate or channel count, resampled to 16 kHz mono).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmserve.plugins.media import decode_audio
from mmserve.plugins.speech.text import normalize_text

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    path: Path
    text: str


def read_librispeech(root: Path) -> list[Utterance]:
    """Every utterance under `root` (sorted by id) whose audio file exists; transcripts normalised."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no LibriSpeech directory at {root}")
    out: list[Utterance] = []
    for transcript in sorted(root.glob("*/*/*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = transcript.parent / f"{uid}.flac"
            if audio.is_file() and normalize_text(text):
                out.append(Utterance(uid, transcript.parent.parent.name, audio, normalize_text(text)))
    return sorted(out, key=lambda u: u.id)


class LibriSpeechClips:
    """The same interface as data.SpeechClips: wave(i) float32 [N] at 16 kHz, text(i)."""

    def __init__(self, root: Path, max_duration_s: float = 35.0):
        self.utterances = read_librispeech(root)
        self.max_duration_s = max_duration_s

    def __len__(self) -> int:
        return len(self.utterances)

    def wave(self, i: int) -> np.ndarray:
        path = self.utterances[i].path
        wave = decode_audio(path.read_bytes(), "audio/flac", sample_rate=SAMPLE_RATE,
                            max_upload_bytes=200 * 1024 * 1024, max_duration_s=self.max_duration_s)  # fmt: skip
        return wave.numpy()

    def text(self, i: int) -> str:
        return self.utterances[i].text
