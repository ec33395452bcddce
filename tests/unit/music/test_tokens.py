"""Serialisation of time steps into tokens, the follow mask and transposition."""

from __future__ import annotations

import random

import pytest
import torch

from mmserve.plugins.music.data import load_quarter
from mmserve.plugins.music.tokens import (
    EOS_ID,
    FIRST_PITCH_ID,
    NUM_PITCHES,
    STEP_ID,
    allowed_next,
    piece_to_roll,
    piece_to_tokens,
    pitch_to_token,
    roll_to_piece,
    tokens_to_piece,
    transpose,
    transpositions,
)


def _random_piece(rng: random.Random, steps: int) -> list[list[int]]:
    return [sorted(rng.sample(range(21, 109), rng.randint(0, 6))) for _ in range(steps)]


def test_tokens_of_a_small_piece_are_low_to_high_then_step() -> None:
    assert piece_to_tokens([[67, 60, 64], [], [62]]) == [
        pitch_to_token(60), pitch_to_token(64), pitch_to_token(67), STEP_ID, STEP_ID, pitch_to_token(62), STEP_ID,
    ]  # fmt: skip


def test_round_trip_roll_tokens_roll_is_exact_on_jsb_and_random_pieces() -> None:
    rng = random.Random(0)
    pieces = load_quarter()["valid"][:20] + [_random_piece(rng, 30) for _ in range(20)]
    for piece in pieces:
        roll = piece_to_roll(piece)
        again = piece_to_roll(tokens_to_piece(piece_to_tokens(roll_to_piece(roll))))
        assert torch.equal(roll, again)
        assert tokens_to_piece(piece_to_tokens(piece)) == [sorted(set(s)) for s in piece]


def test_mask_allows_only_higher_pitches_or_end_of_step() -> None:
    last = torch.tensor([-1, 0, 39, NUM_PITCHES - 1])
    mask = allowed_next(last)
    assert mask[0, FIRST_PITCH_ID:].all() and mask[0, STEP_ID]
    for row, highest in enumerate(last.tolist()):
        allowed = (mask[row, FIRST_PITCH_ID:].nonzero().flatten()).tolist()
        assert allowed == list(range(highest + 1, NUM_PITCHES))
        assert mask[row, STEP_ID] and not mask[row, EOS_ID] and not mask[row, :STEP_ID].any()


def test_every_jsb_serialisation_passes_the_mask() -> None:
    for piece in load_quarter()["test"][:10]:
        last = -1
        for token in piece_to_tokens(piece):
            assert allowed_next(torch.tensor([last]))[0, token], f"token {token} masked after {last}"
            last = -1 if token == STEP_ID else token - FIRST_PITCH_ID


def test_transpositions_keep_every_note_on_the_piano() -> None:
    high = [[100, 108]]
    low = [[21, 30]]
    assert max(transpositions(high)) == 0 and min(transpositions(high)) == -6
    assert min(transpositions(low)) == 0 and max(transpositions(low)) == 6
    for piece in load_quarter()["train"][:30] + [high, low]:
        for shift in transpositions(piece):
            moved = transpose(piece, shift)
            assert all(21 <= p <= 108 for step in moved for p in step)
            assert piece_to_roll(moved).sum() == piece_to_roll(piece).sum()
    with pytest.raises(AssertionError, match="outside"):
        transpose(high, 1)
