"""The music model: exact step NLL through the serial head, the mask inside `step`, step
budgets, seeded and batched decoding, and the Bernoulli baseline's log-probability."""

from __future__ import annotations

import math

import torch

from mmserve.plugins.music.model import MusicModel, collate_pieces
from mmserve.plugins.music.tokens import (
    BOS_ID,
    EOS_ID,
    FIRST_PITCH_ID,
    NUM_PITCHES,
    STEP_ID,
    piece_to_roll,
    piece_to_tokens,
)
from mmserve.plugins.nn.search import greedy_decode, sample_decode

PIECES = [[[60, 64, 67], [62, 65], [], [59, 62, 67, 74]], [[48], [50, 53, 57, 60, 65]]]


def _teacher_forced(model: MusicModel, pieces: list, primers: list | None = None) -> torch.Tensor:
    primers = primers or [[] for _ in pieces]
    items = [(piece_to_roll(p) if p else torch.zeros(0, NUM_PITCHES), piece_to_roll(t)) for p, t in zip(primers, pieces)]
    with torch.no_grad():
        return model.step_log_probs(collate_pieces(items))  # [B, T]


def _token_by_token(model: MusicModel, piece: list, primer: list | None = None) -> list[float]:
    """log p of each step as the sum of its tokens' log-softmax, fed one token at a time."""
    source = piece_to_roll(primer) if primer else torch.zeros(0, NUM_PITCHES)
    with torch.no_grad():
        memory = model.encode(model.collate([source]))
        state, prev = model.init_state(memory), torch.tensor([BOS_ID])
        steps, current = [], 0.0
        for token in piece_to_tokens(piece):
            logits, state, _ = model.step(prev, state, memory)
            current += torch.log_softmax(logits, dim=-1)[0, token].item()
            if token == STEP_ID:
                steps.append(current)
                current = 0.0
            prev = torch.tensor([token])
    return steps


def test_step_nll_is_exactly_the_sum_of_its_token_log_probs(serial_model: MusicModel) -> None:
    batched = _teacher_forced(serial_model, PIECES, [[], [[55, 59]]])
    for row, (piece, primer) in enumerate(zip(PIECES, [[], [[55, 59]]])):
        by_hand = _token_by_token(serial_model, piece, primer)
        assert len(by_hand) == len(piece)
        assert torch.allclose(batched[row, : len(piece)], torch.tensor(by_hand), atol=1e-4)
        assert (batched[row, len(piece) :] == 0).all()  # padding adds nothing


def test_nll_by_hand_on_a_one_step_piece(serial_model: MusicModel) -> None:
    # p([60, 64]) = p(60 | start) * p(64 | 60) * p(<step> | 60, 64), each a softmax over the allowed tokens.
    with torch.no_grad():
        memory = serial_model.encode(serial_model.collate([torch.zeros(0, NUM_PITCHES)]))
        state = serial_model.init_state(memory)
        total = 0.0
        for prev, token in ((BOS_ID, FIRST_PITCH_ID + 39), (FIRST_PITCH_ID + 39, FIRST_PITCH_ID + 43), (FIRST_PITCH_ID + 43, STEP_ID)):
            logits, state, _ = serial_model.step(torch.tensor([prev]), state, memory)
            allowed = torch.isfinite(logits[0])
            total += logits[0, token].item() - math.log(torch.exp(logits[0, allowed].double()).sum().item())
    assert abs(_teacher_forced(serial_model, [[[60, 64]]])[0, 0].item() - total) < 1e-4


def test_mask_in_step_holds_under_any_sampling(serial_model: MusicModel) -> None:
    memory = serial_model.encode(serial_model.collate([torch.zeros(0, NUM_PITCHES)] * 4))
    generator = torch.Generator().manual_seed(0)
    results = sample_decode(serial_model, memory, 200, temperature=3.0, generator=generator)
    for result in results:
        assert EOS_ID not in result.tokens  # no budget: the piece never ends by itself
        last = -1
        for token in result.tokens:
            assert token == STEP_ID or token - FIRST_PITCH_ID > last, f"{token} after pitch index {last}"
            last = -1 if token == STEP_ID else token - FIRST_PITCH_ID


def test_a_step_budget_ends_the_row_after_exactly_that_many_steps(serial_model: MusicModel) -> None:
    memory = serial_model.encode(serial_model.collate([(torch.zeros(0, NUM_PITCHES), 3), (piece_to_roll([[60]]), 5)]))
    results = sample_decode(serial_model, memory, 500, temperature=1.0, generator=torch.Generator().manual_seed(1))
    for result, steps in zip(results, (3, 5)):
        assert result.finished and result.tokens.count(STEP_ID) == steps


def test_same_seed_same_music_and_batched_equals_one_by_one(serial_model: MusicModel) -> None:
    primers = [torch.zeros(0, NUM_PITCHES), piece_to_roll([[60, 64], [62]]), piece_to_roll([[55]] * 5)]

    def decode(items, seed=None):
        memory = serial_model.encode(serial_model.collate(items))
        if seed is None:
            return [r.tokens for r in greedy_decode(serial_model, memory, 60)]
        return [r.tokens for r in sample_decode(serial_model, memory, 60, 1.0, generator=torch.Generator().manual_seed(seed))]

    assert decode(primers, seed=7) == decode(primers, seed=7)
    assert decode(primers, seed=7) != decode(primers, seed=8)
    together = decode(primers)
    alone = [decode([p])[0] for p in primers]
    assert together == alone
    assert len({tuple(t) for t in together}) > 1  # the primers lead to different music


def test_bernoulli_log_prob_is_the_sum_over_88_independent_units(bernoulli_model: MusicModel) -> None:
    piece = PIECES[0]
    log_p = _teacher_forced(bernoulli_model, [piece])[0]
    with torch.no_grad():
        memory = bernoulli_model.encode(bernoulli_model.collate([torch.zeros(0, NUM_PITCHES)]))
        state, prev = bernoulli_model.init_state(memory), torch.zeros(1, NUM_PITCHES)
        for t, frame in enumerate(piece_to_roll(piece)):
            logits, state, _ = bernoulli_model.step(prev, state, memory)
            p = torch.sigmoid(logits[0].double())
            by_hand = torch.where(frame > 0, p.log(), (1 - p).log()).sum()
            assert abs(log_p[t].item() - by_hand.item()) < 1e-3
            prev = frame.unsqueeze(0)
