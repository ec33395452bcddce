"""The n-gram LM for shallow fusion: Witten-Bell counts against a direct computation, word
boundaries, open vocabulary, artifacts."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mmserve.plugins.nn.ngram import STATE_KEY, NGramLM

# tokens: 0 start, 1 end, 2 space, 3.. letters
START, END, SPACE = 0, 1, 2
CORPUS = [[START, 3, 4, SPACE, 3, 5, END], [START, 4, 4, SPACE, 3, 4, SPACE, 5, END], [START, 3, 4, END]]
VOCAB = 7


def direct_witten_bell(corpus: list[list[int]], context: tuple[int, ...], order: int, boundary: int | None) -> list[float]:
    """P(next | context) by the textbook recursion over explicitly listed n-grams."""
    events: Counter = Counter()
    for seq in corpus:
        for i in range(1, len(seq)):
            start = 0
            for j in range(i - 1, -1, -1):  # the last boundary before i
                if boundary is not None and seq[j] == boundary:
                    start = j
                    break
            for k in range(0, order):
                if i - k < start:
                    break
                events[(tuple(seq[i - k : i]), seq[i])] += 1

    def prob_all(h: tuple[int, ...], c: int) -> float:
        # P(c | h) = (C(h c) + U(h) P(c | h')) / (C(h) + U(h)), from the empty context up
        p = 1.0 / VOCAB
        for k in range(0, len(h) + 1):
            sub = h[len(h) - k :]
            total = sum(n for (ctx, _), n in events.items() if ctx == sub)
            if total == 0:
                continue
            types = len({nxt for (ctx, nxt) in events if ctx == sub})
            p = (events[(sub, c)] + types * p) / (total + types)
        return p

    return [prob_all(context, c) for c in range(VOCAB)]


def state_after(lm: NGramLM, tokens: list[int]) -> dict[str, torch.Tensor]:
    state = lm.initial_state(1)
    for token in tokens:
        state = lm.advance(state, torch.tensor([token]))
    return state


@pytest.mark.parametrize("boundary", [None, SPACE])
@pytest.mark.parametrize("history", [[START], [START, 3], [START, 3, 4], [START, 3, 4, SPACE], [START, 4, 4, SPACE, 3], [START, 6, 6]])
def test_probabilities_match_a_direct_witten_bell_computation(history, boundary):
    order = 3
    lm = NGramLM.count(CORPUS, order=order, vocab_size=VOCAB, boundaries=() if boundary is None else (boundary,))
    context = list(history)
    if boundary is not None and boundary in context:
        context = context[len(context) - 1 - context[::-1].index(boundary) :]
    expected = direct_witten_bell(CORPUS, tuple(context[-(order - 1) :]), order, boundary)
    got = lm.log_probs(state_after(lm, history))[0].exp()
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert got.sum().item() == pytest.approx(1.0)
    assert (got > 0).all(), "open vocabulary: nothing is impossible"


def test_a_word_boundary_resets_the_context():
    lm = NGramLM.count(CORPUS, order=5, vocab_size=VOCAB, boundaries=(SPACE,))
    a = lm.log_probs(state_after(lm, [START, 3, 4, SPACE, 3]))
    b = lm.log_probs(state_after(lm, [START, 4, 4, SPACE, 3]))
    torch.testing.assert_close(a, b)
    plain = NGramLM.count(CORPUS, order=5, vocab_size=VOCAB)
    assert not torch.allclose(plain.log_probs(state_after(plain, [START, 3, 4, SPACE, 3])),
                              plain.log_probs(state_after(plain, [START, 4, 4, SPACE, 3])))  # fmt: skip


def test_the_model_learns_what_follows_and_batches_rows(tmp_path):
    corpus = [[START, 3, 4, 5, END]] * 50 + [[START, 3, 6, END]] * 10
    lm = NGramLM.count(corpus, order=4, vocab_size=VOCAB)
    rows = [[START, 3], [START, 3, 4], [START]]
    states = [state_after(lm, r) for r in rows]
    batched = lm.log_probs({STATE_KEY: torch.cat([s[STATE_KEY] for s in states])})
    for i, s in enumerate(states):
        torch.testing.assert_close(batched[i], lm.log_probs(s)[0])
    assert batched[0].argmax().item() == 4 and batched[0][4].exp() > 0.7  # "3" is mostly followed by "4"
    assert batched[1].argmax().item() == 5 and batched[2].argmax().item() == 3
    lm.save(tmp_path)
    assert NGramLM.exists(tmp_path)
    loaded = NGramLM.load(tmp_path)
    assert loaded.config == lm.config and loaded.config.tokens_counted == 60 * 4 - 10
    torch.testing.assert_close(loaded.log_probs({STATE_KEY: torch.cat([s[STATE_KEY] for s in states])}), batched)
    assert math.isclose(batched.exp().sum(1).min().item(), 1.0)


def test_out_of_range_tokens_and_too_high_orders_are_refused():
    with pytest.raises(AssertionError, match="out of range"):
        NGramLM.count([[0, 9]], order=2, vocab_size=VOCAB)
    with pytest.raises(AssertionError, match="too high"):
        NGramLM.count([[0, 1]], order=40, vocab_size=VOCAB)


def test_scoring_chosen_tokens_equals_scoring_all_of_them():
    lm = NGramLM.count(CORPUS, order=4, vocab_size=VOCAB, boundaries=(SPACE,))
    states = [state_after(lm, h) for h in ([START], [START, 3, 4], [START, 4, 4, SPACE, 3])]
    state = {STATE_KEY: torch.cat([s[STATE_KEY] for s in states])}
    chosen = torch.tensor([[1, 4, 6], [5, 3, 1], [0, 2, 4]])
    torch.testing.assert_close(lm.log_probs(state, chosen), lm.log_probs(state).gather(1, chosen))


def test_the_table_of_seen_contexts_gives_the_interpolation_of_any_context():
    lm = NGramLM.count(CORPUS * 3 + [[START, 6, 5, 4, 3, SPACE, 6, END]], order=5, vocab_size=VOCAB, boundaries=(SPACE,))
    contexts = torch.randint(0, VOCAB, (200, 4), generator=torch.Generator().manual_seed(0))
    contexts[:50, :2] = -1  # short contexts (utterance starts, word starts)
    contexts[50:60] = -1
    torch.testing.assert_close(lm.log_probs({STATE_KEY: contexts}), lm._interpolated(contexts))
