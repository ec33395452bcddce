"""CTC prefix scores, for joint CTC/attention decoding (Watanabe et al. 2017, "Hybrid CTC/
attention architecture for end-to-end speech recognition").

An attention decoder alone may skip or repeat a stretch of the input, or run on past its end;
a CTC head on the encoder cannot, because its alignments are monotonic and cover every frame.
Adding the CTC prefix score to the decoder's log-probabilities at each step keeps hypotheses
that the CTC head also finds likely. The state lives in the decoder state (a dict of
batch-first tensors), so the engine gathers, reorders (beams) and concatenates it (continuous
batching) like any other state, and nothing in the engine knows about CTC.

For a prefix g, r_t^n(g) / r_t^b(g) are the log-probabilities of g over frames 0..t with the
last frame emitting g's last label / a blank; the prefix score is
psi(g) = log sum over alignments of g followed by anything. For each next label c at once:

    phi_t(c)   = r_t^b(g) + (r_t^n(g) unless c is g's last label)        (log-sum)
    r_t^n(g+c) = (r_{t-1}^n(g+c) + phi_{t-1}(c)) x_t(c)                  (probabilities)
    r_t^b(g+c) = (r_{t-1}^n(g+c) + r_{t-1}^b(g+c)) x_t(blank)
    psi(g+c)   = sum_t phi_{t-1}(c) x_t(c)
    psi(g+eos) = r_{T-1}^n(g) + r_{T-1}^b(g)

The two linear recurrences are solved in closed form with cumulative sums and
`logcumsumexp`, so a step costs a few tensor operations over [B, T, V], not a loop over T.
Frames past a row's length never reach its scores (every recurrence runs forward in time and
the sums stop at the row's last frame), so a row scores the same alone or padded in a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmserve.plugins.nn.contract import State

NEG_INF = float("-inf")
# State keys, all batch-first: log-probs [B, T, V], lengths [B], r for every next label
# [B, T, 2, V] (n, b), psi for every next label [B, V].
KEYS = ("ctc_x", "ctc_len", "ctc_r", "ctc_psi")


def ctc_initial_state(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> State:
    """The CTC state of the empty prefix, for log-probabilities [B, T, V] with real lengths [B].

    `ctc_r` holds r of the empty prefix under every label, so that the first step's selection
    by its `prev` token (the start token) finds it."""
    assert log_probs.dim() == 3, f"expected CTC log-probabilities [B, T, V], got {tuple(log_probs.shape)}"
    assert lengths.shape == log_probs.shape[:1], f"lengths {tuple(lengths.shape)} for {log_probs.shape[0]} rows"
    x = log_probs.double()  # cumulative sums over long inputs: float32 would lose the small terms
    batch, _, vocab = x.shape
    blanks = x[..., blank].cumsum(1)  # [B, T]: only blanks so far
    r = torch.stack([torch.full_like(blanks, NEG_INF), blanks], dim=2)  # [B, T, 2]
    return {
        "ctc_x": x,
        "ctc_len": lengths.to(torch.long),
        "ctc_r": r.unsqueeze(-1).expand(-1, -1, -1, vocab).contiguous(),
        "ctc_psi": x.new_zeros(batch, vocab),
    }


def ctc_prefix_step(
    prev: torch.Tensor, state: State, start_id: int, end_id: int, blank: int, never: tuple[int, ...] = ()
) -> tuple[torch.Tensor, State]:
    """One decoding step. prev [B]: the label just appended to each row's prefix (the start
    token on the first step). Returns the score of every next label [B, V],
    psi(g + c) - psi(g) (c = `end_id`: the prefix is complete), and the new CTC state.

    Labels in `never` (the start token, padding) and the blank score -inf. A row whose prefix
    CTC already rules out (psi(g) = -inf, e.g. longer than the input) scores 0 for every label:
    the attention decoder alone decides it.
    """
    x, lengths = state["ctc_x"], state["ctc_len"]  # [B, T, V], [B]
    batch, frames, vocab = x.shape
    pick = prev.view(batch, 1, 1, 1).expand(batch, frames, 2, 1)
    r_g = state["ctc_r"].gather(3, pick).squeeze(3)  # [B, T, 2]: r of the prefix g
    psi_g = state["ctc_psi"].gather(1, prev.view(batch, 1)).squeeze(1)  # [B]
    rn, rb = r_g[..., 0], r_g[..., 1]  # [B, T]
    repeat = F.one_hot(prev, vocab).bool().unsqueeze(1)  # [B, 1, V]: c is g's last label
    phi = torch.where(repeat, rb.unsqueeze(-1), torch.logaddexp(rn, rb).unsqueeze(-1))  # [B, T, V]
    empty = torch.where(prev == start_id, 0.0, NEG_INF).to(x.dtype).view(batch, 1, 1).expand(batch, 1, vocab)
    # r^n(g+c): the first label may start at frame 0 only when g is empty.
    emitted = x.cumsum(1)  # [B, T, V]
    starts = torch.cat([empty, phi[:, :-1] - emitted[:, :-1]], dim=1)  # [B, T, V]
    rn_new = emitted + torch.logcumsumexp(starts, dim=1)
    blanks = x[..., blank].cumsum(1).unsqueeze(-1)  # [B, T, 1]
    ends = torch.cat([x.new_full((batch, 1, vocab), NEG_INF), rn_new[:, :-1] - blanks[:, :-1]], dim=1)
    rb_new = blanks + torch.logcumsumexp(ends, dim=1)
    real = torch.arange(frames, device=x.device).view(1, frames, 1) < lengths.view(batch, 1, 1)
    terms = torch.cat([empty, phi[:, :-1]], dim=1) + x  # [B, T, V]: c first emitted at frame t
    psi = torch.logsumexp(terms.masked_fill(~real, NEG_INF), dim=1)  # [B, V]
    last = (lengths - 1).clamp_min(0).view(batch, 1)
    psi[:, end_id] = torch.logaddexp(rn.gather(1, last), rb.gather(1, last)).squeeze(1)
    for label in (blank, *never):
        psi[:, label] = NEG_INF
    score = psi - psi_g.unsqueeze(1)
    score = torch.where(torch.isfinite(psi_g).unsqueeze(1), score, torch.zeros_like(score))
    new_state = {"ctc_x": x, "ctc_len": lengths, "ctc_r": torch.stack([rn_new, rb_new], dim=2), "ctc_psi": psi}
    return score, new_state
