"""Serialising polyphonic time steps into tokens, and back.

A piece is a list of time steps, each the set of sounding MIDI pitches (21..108, the piano).
Each step becomes its pitches from low to high followed by an end-of-step token, so a
categorical decoder models the notes of one step jointly:

    [[60, 64, 67], [62]]  ->  <p60> <p64> <p67> <step> <p62> <step>

Because pitches within a step must rise, the serialisation is unique and the round trip
piano roll -> tokens -> piano roll is exact (`allowed_next` is the matching mask).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

LOWEST_PITCH = 21  # A0
HIGHEST_PITCH = 108  # C8
NUM_PITCHES = HIGHEST_PITCH - LOWEST_PITCH + 1  # 88

PAD_ID = 0
BOS_ID = 1  # start of a piece (fed as the first `prev`)
EOS_ID = 2  # end of a piece: never predicted (masked); generation stops at a length
STEP_ID = 3  # end of one time step
FIRST_PITCH_ID = 4
VOCAB_SIZE = FIRST_PITCH_ID + NUM_PITCHES  # 92
MAX_NOTES_PER_STEP = 16  # a generated step closes after this many notes; inputs may not hold more
TOKENS_PER_STEP = MAX_NOTES_PER_STEP + 1  # the most tokens one step takes (its notes + <step>)


def steps_to_tokens(steps: int) -> int:
    """The most tokens `steps` generated time steps can take, <eos> included."""
    return steps * TOKENS_PER_STEP + 1


def tokens_to_steps(tokens: int) -> int:
    """The most time steps that always fit in `tokens` tokens."""
    return max((tokens - 1) // TOKENS_PER_STEP, 0)

Step = list[int]
Piece = list[Step]


def pitch_to_token(pitch: int) -> int:
    assert LOWEST_PITCH <= pitch <= HIGHEST_PITCH, f"pitch {pitch} outside {LOWEST_PITCH}..{HIGHEST_PITCH}"
    return FIRST_PITCH_ID + pitch - LOWEST_PITCH


def token_to_pitch(token: int) -> int:
    assert token >= FIRST_PITCH_ID, f"token {token} is not a pitch"
    return token - FIRST_PITCH_ID + LOWEST_PITCH


def normalise_step(step: Iterable[int]) -> Step:
    """Sorted distinct pitches; drops -1 (a silent voice in the 16th-note SATB files)."""
    return sorted({int(p) for p in step if int(p) >= 0})


def piece_to_tokens(piece: Sequence[Iterable[int]]) -> list[int]:
    """Pitches low -> high then <step>, for every step (no <bos>)."""
    tokens: list[int] = []
    for step in piece:
        tokens.extend(pitch_to_token(p) for p in normalise_step(step))
        tokens.append(STEP_ID)
    return tokens


def tokens_to_piece(tokens: Iterable[int]) -> Piece:
    """Inverse of `piece_to_tokens`; a trailing unfinished step is kept; specials are skipped."""
    piece: Piece = []
    current: Step = []
    open_step = False
    for token in tokens:
        token = int(token)
        if token == STEP_ID:
            piece.append(current)
            current, open_step = [], False
        elif token >= FIRST_PITCH_ID:
            current.append(token_to_pitch(token))
            open_step = True
    if open_step:
        piece.append(current)
    return piece


def piece_to_roll(piece: Sequence[Iterable[int]]) -> torch.Tensor:
    """Multi-hot piano roll [T, 88] (float)."""
    roll = torch.zeros(len(piece), NUM_PITCHES)
    for t, step in enumerate(piece):
        for p in normalise_step(step):
            assert LOWEST_PITCH <= p <= HIGHEST_PITCH, f"pitch {p} outside {LOWEST_PITCH}..{HIGHEST_PITCH}"
            roll[t, p - LOWEST_PITCH] = 1.0
    return roll


def roll_to_piece(roll: torch.Tensor) -> Piece:
    """Inverse of `piece_to_roll` for a [T, 88] roll (any value > 0.5 is a note)."""
    assert roll.dim() == 2 and roll.shape[1] == NUM_PITCHES, f"roll must be [T, {NUM_PITCHES}], got {tuple(roll.shape)}"
    return [[LOWEST_PITCH + int(i) for i in (row > 0.5).nonzero().flatten()] for row in roll]


def pitch_range(piece: Sequence[Iterable[int]]) -> tuple[int, int] | None:
    """(lowest, highest) pitch of a piece, or None if it has no notes."""
    pitches = [p for step in piece for p in normalise_step(step)]
    return (min(pitches), max(pitches)) if pitches else None


def transpositions(piece: Sequence[Iterable[int]], max_shift: int = 6) -> list[int]:
    """Every shift in [-max_shift, max_shift] that keeps all notes in 21..108 (0 included)."""
    bounds = pitch_range(piece)
    if bounds is None:
        return [0]
    low, high = bounds
    return [s for s in range(-max_shift, max_shift + 1) if low + s >= LOWEST_PITCH and high + s <= HIGHEST_PITCH]


def transpose(piece: Sequence[Iterable[int]], shift: int) -> Piece:
    """Every pitch moved by `shift` semitones; fails loudly if a note would leave 21..108."""
    out = [[p + shift for p in normalise_step(step)] for step in piece]
    bounds = pitch_range(out)
    assert bounds is None or (bounds[0] >= LOWEST_PITCH and bounds[1] <= HIGHEST_PITCH), (
        f"transposing by {shift} moves notes outside {LOWEST_PITCH}..{HIGHEST_PITCH}"
    )
    return out


def allowed_next(last_pitch: torch.Tensor) -> torch.Tensor:
    """Mask [B, VOCAB_SIZE] of tokens that may follow, given the highest pitch index (0..87)
    already in the current step, -1 when the step is empty.

    Inside a step only a higher pitch or <step> may follow, so every piece has exactly one
    serialisation; <pad>, <bos> and <eos> are never predicted.
    """
    batch = last_pitch.shape[0]
    pitch_index = torch.arange(NUM_PITCHES, device=last_pitch.device).expand(batch, NUM_PITCHES)
    pitches_ok = pitch_index > last_pitch.unsqueeze(1)  # [B, 88]
    mask = torch.zeros(batch, VOCAB_SIZE, dtype=torch.bool, device=last_pitch.device)
    mask[:, STEP_ID] = True
    mask[:, FIRST_PITCH_ID:] = pitches_ok
    return mask
