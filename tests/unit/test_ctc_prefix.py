"""CTC prefix scores (plugins/nn/ctc.py): they add up to the CTC log-likelihood, padding and
batch neighbours never change a row, and impossible prefixes leave the decision to attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmserve.plugins.nn.contract import concat_states, select_state
from mmserve.plugins.nn.ctc import ctc_initial_state, ctc_prefix_step

BLANK, START, END, VOCAB = 0, 1, 2, 7  # labels 3..6 are characters
CHARACTERS = torch.tensor([3, 4, 5, 6])


def log_probs(frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(1, frames, VOCAB, generator=gen) * 2, dim=-1)


def step(prev: torch.Tensor, state: dict, candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Scores of every label [B, V] (-inf where not scored) and the new state."""
    batch = prev.shape[0]
    candidates = CHARACTERS.expand(batch, -1) if candidates is None else candidates
    score, end_score, state = ctc_prefix_step(prev, state, candidates, START, END, BLANK)
    full = torch.full((batch, VOCAB), float("-inf"), dtype=score.dtype).scatter(1, candidates, score)
    full[:, END] = end_score
    return full, state


def sequence_score(x: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
    """The summed step scores of each row's labels and then the end: log p_CTC(labels | x)."""
    state = ctc_initial_state(x, lengths, BLANK, START)
    prev = torch.full((x.shape[0],), START)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k in range(max(len(s) for s in labels) + 1):
        score, state = step(prev, state)
        chosen = torch.tensor([s[k] if k < len(s) else END for s in labels])
        done = torch.tensor([k > len(s) for s in labels])
        total += torch.where(done, 0.0, score.gather(1, chosen.view(-1, 1)).squeeze(1))
        prev = torch.where(done, prev, chosen)
    return total


@pytest.mark.parametrize("labels", [[3], [3, 4, 5], [4, 4, 6, 4], [5, 5], [6, 3, 3, 3, 4]])
def test_step_scores_add_up_to_the_ctc_log_likelihood(labels):
    x = log_probs(12, seed=len(labels))
    ours = sequence_score(x, torch.tensor([12]), [labels])
    reference = -F.ctc_loss(x.transpose(0, 1), torch.tensor([labels]), torch.tensor([12]), torch.tensor([len(labels)]),
                            blank=BLANK, reduction="sum")  # fmt: skip
    assert float(ours) == pytest.approx(float(reference), abs=1e-5)


def test_a_row_scores_the_same_alone_padded_in_a_batch_or_joined_later():
    short, long = log_probs(6, seed=1), log_probs(15, seed=2)
    labels = [[3, 5], [4, 4, 6]]
    alone = [sequence_score(short, torch.tensor([6]), labels[:1]), sequence_score(long, torch.tensor([15]), labels[1:])]
    padded = torch.cat([torch.cat([short, torch.randn(1, 9, VOCAB)], dim=1), long])  # garbage past the short row's end
    together = sequence_score(padded, torch.tensor([6, 15]), labels)
    torch.testing.assert_close(together, torch.cat(alone))
    # joined by the engine: zero-padded state, then rows picked out again
    states = [ctc_initial_state(short, torch.tensor([6]), BLANK, START), ctc_initial_state(long, torch.tensor([15]), BLANK, START)]
    joined = select_state(concat_states(states), torch.tensor([1, 0]))
    score, _ = step(torch.full((2,), START), joined)
    first, _ = step(torch.full((1,), START), states[0])
    torch.testing.assert_close(score[1], first[0])


def test_a_few_candidates_score_exactly_as_they_do_among_all():
    x = log_probs(10, seed=5)
    every, state = step(torch.tensor([START]), ctc_initial_state(x, torch.tensor([10]), BLANK, START))
    few, few_state = step(torch.tensor([START]), ctc_initial_state(x, torch.tensor([10]), BLANK, START), torch.tensor([[5, 3]]))
    torch.testing.assert_close(few[0, [5, 3, END]], every[0, [5, 3, END]])
    assert few[0, 4] == float("-inf") and few[0, 6] == float("-inf")
    # the next step finds its prefix among the few candidates, wherever it sits
    then_every, _ = step(torch.tensor([3]), state)
    then_few, _ = step(torch.tensor([3]), few_state)
    torch.testing.assert_close(then_few, then_every)


def test_impossible_prefixes_are_left_to_the_decoder():
    x = log_probs(2, seed=3)
    state = ctc_initial_state(x, torch.tensor([2]), BLANK, START)
    prev = torch.tensor([START])
    for label in (3, 4):  # two labels fill the two frames
        score, state = step(prev, state)
        prev = torch.tensor([label])
    score, state = step(prev, state)
    assert torch.isfinite(score[0, END]) and score[0, 5] == float("-inf")  # no frame left for a third label
    score, _ = step(torch.tensor([5]), state)
    assert bool((score[0, [3, 4, 5, 6, END]] == 0).all())  # CTC rules the prefix out: the decoder alone decides
