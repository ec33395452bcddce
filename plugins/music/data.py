"""JSB Chorales data: the quarter-note benchmark split, the 16th-note SATB split for
harmonisation, and the training sampler (transposition augmentation, random primers).

The files live in `../shared/data/jsb/` from the project root (see ../shared/README.md);
`MMSERVE_JSB_DIR` points elsewhere. Tune on `valid`, report on `test`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmserve.plugins.music.model import MusicBatch, collate_pieces
from mmserve.plugins.music.tokens import NUM_PITCHES, Piece, normalise_step, piece_to_roll, transpose, transpositions

QUARTER_FILE = "jsb-chorales-quarter.json"
SIXTEENTH_FILE = "Jsb16thSeparated.json"
SPLITS = ("train", "valid", "test")


def default_data_dir() -> Path:
    """`MMSERVE_JSB_DIR`, else `<project root>/../shared/data/jsb`."""
    env = os.environ.get("MMSERVE_JSB_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "jsb"


def _read(name: str, data_dir: Path | None) -> dict:
    path = (data_dir or default_data_dir()) / name
    if not path.is_file():
        raise FileNotFoundError(f"JSB Chorales file {path} not found; set MMSERVE_JSB_DIR to the folder holding {name}")
    return json.loads(path.read_text())


def load_quarter(data_dir: Path | None = None) -> dict[str, list[Piece]]:
    """The benchmark split: {train, valid, test} -> chorales, each a list of quarter-note steps."""
    raw = _read(QUARTER_FILE, data_dir)
    return {split: [[normalise_step(step) for step in piece] for piece in raw[split]] for split in SPLITS}


@dataclass
class Harmony:
    """One chorale at 16th-note resolution: the soprano line and the alto/tenor/bass below it."""

    melody: Piece  # one pitch per step (or none when the soprano rests)
    lower: Piece  # the other voices' pitches per step


def load_harmony(data_dir: Path | None = None) -> dict[str, list[Harmony]]:
    """The 16th-note split with voices separated: step = [S, A, T, B], -1 for a silent voice."""
    raw = _read(SIXTEENTH_FILE, data_dir)
    out: dict[str, list[Harmony]] = {}
    for split in SPLITS:
        out[split] = [
            Harmony(melody=[normalise_step(step[:1]) for step in piece], lower=[normalise_step(step[1:]) for step in piece])
            for piece in raw[split]
        ]
    return out


def count_steps(pieces: Sequence[Piece]) -> int:
    return sum(len(piece) for piece in pieces)


class ContinuationSampler:
    """Training items for free composition / continuation, fresh every epoch.

    Each chorale is transposed by a random shift that keeps every note in 21..108; with
    probability `primer_prob` its first k steps (k uniform in 1..min(T-1, max_primer)) become
    the encoder's primer and the decoder predicts the rest, otherwise the primer is empty
    (the null memory: exactly the benchmark's condition).
    """

    def __init__(self, pieces: Sequence[Piece], max_shift: int, primer_prob: float, max_primer: int, seed: int):
        assert 0.0 <= primer_prob <= 1.0, f"primer_prob must be in [0, 1], got {primer_prob}"
        self.pieces = [p for p in pieces if p]
        self.shifts = [transpositions(p, max_shift) for p in self.pieces]
        self.primer_prob, self.max_primer = primer_prob, max_primer
        self.rng = random.Random(seed)

    def epoch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        items = []
        for piece, shifts in zip(self.pieces, self.shifts):
            roll = piece_to_roll(transpose(piece, self.rng.choice(shifts)))  # [T, 88]
            k = 0
            if len(piece) > 1 and self.rng.random() < self.primer_prob:
                k = self.rng.randint(1, min(len(piece) - 1, self.max_primer))
            items.append((roll[:k], roll[k:]))
        return items


class HarmonySampler:
    """Training items for harmonisation: source = soprano roll, target = the lower voices, both
    transposed by the same random shift.

    With `crop` > 0 each chorale is cut, from a random offset, into windows of at most `crop`
    steps (melody and voices alike): the decoder loop then runs over short windows with many
    rows at once, which is several times faster per step on a CPU than whole 16th-note
    chorales (up to ~600 steps); every step is still seen once per epoch.
    """

    def __init__(self, chorales: Sequence[Harmony], max_shift: int, seed: int, crop: int = 0):
        assert crop >= 0, f"crop must be >= 0 (0 = whole chorales), got {crop}"
        self.chorales = list(chorales)
        both = [[m + low for m, low in zip(c.melody, c.lower)] for c in self.chorales]
        self.shifts = [transpositions(p, max_shift) for p in both]
        self.crop = crop
        self.rng = random.Random(seed)

    def epoch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        items = []
        for chorale, shifts in zip(self.chorales, self.shifts):
            shift = self.rng.choice(shifts)
            melody = piece_to_roll(transpose(chorale.melody, shift))  # [T, 88]
            lower = piece_to_roll(transpose(chorale.lower, shift))  # [T, 88]
            if not self.crop or len(melody) <= self.crop:
                items.append((melody, lower))
                continue
            cuts = [0, *range(self.rng.randint(1, self.crop), len(melody), self.crop), len(melody)]
            items += [(melody[a:b], lower[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
        return items


def benchmark_items(pieces: Sequence[Piece]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation items: no primer, untransposed (the anchors' condition)."""
    return [(torch.zeros(0, NUM_PITCHES), piece_to_roll(p)) for p in pieces if p]


def harmony_items(chorales: Sequence[Harmony]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(piece_to_roll(c.melody), piece_to_roll(c.lower)) for c in chorales]


def batches(
    items: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int, rng: random.Random | None = None
) -> Iterator[MusicBatch]:
    """Padded batches of similar target length (less padding); shuffled when `rng` is given."""
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    # Sort within windows of 8 batches: batches hold similar lengths but stay random.
    window = batch_size * 8
    groups = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: items[i][1].shape[0])
        groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        rng.shuffle(groups)
    for group in groups:
        yield collate_pieces([items[i] for i in group])
