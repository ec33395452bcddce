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
`logcumsumexp`, so a step costs a few tensor operations over [B, T, K], not a loop over T;
K is a few candidate labels (the decoder's best), as in ESPnet's partial scoring: the others
are left to the decoder's own score.
Frames past a row's length never reach its scores (every recurrence runs forward in time and
the sums stop at the row's last frame), so a row scores the same alone or padded in a batch.
"""

from __future__ import annotations

import torch

from mmserve.plugins.nn.contract import State

NEG_INF = float("-inf")
# State keys, all batch-first: log-probs [B, T, V], lengths [B], the candidate labels of the
# last step [B, K] with their r [B, T, 2, K] (n, b) and psi [B, K].
KEYS = ("ctc_x", "ctc_len", "ctc_labels", "ctc_r", "ctc_psi")


def ctc_initial_state(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int, start_id: int, width: int = 1) -> State:
    """The CTC state of the empty prefix, for log-probabilities [B, T, V] with real lengths [B].

    The empty prefix is stored as the "candidate" `start_id`, so that the first step's
    selection by its `prev` token (the start token) finds it; `width` copies of it, the number
    of candidates every later step keeps, so that the state of a new request has the shape of
    the running rows' it joins (the engine pads only the position dimension)."""
    assert log_probs.dim() == 3, f"expected CTC log-probabilities [B, T, V], got {tuple(log_probs.shape)}"
    assert lengths.shape == log_probs.shape[:1], f"lengths {tuple(lengths.shape)} for {log_probs.shape[0]} rows"
    x = log_probs.double()  # cumulative sums over long inputs: float32 would lose the small terms
    batch = x.shape[0]
    blanks = x[..., blank].cumsum(1)  # [B, T]: only blanks so far
    r = torch.stack([torch.full_like(blanks, NEG_INF), blanks], dim=2)  # [B, T, 2]
    return {
        "ctc_x": x,
        "ctc_len": lengths.to(torch.long),
        "ctc_labels": torch.full((batch, width), start_id, dtype=torch.long, device=x.device),
        "ctc_r": r.unsqueeze(-1).expand(-1, -1, -1, width).contiguous(),
        "ctc_psi": x.new_zeros(batch, width),
    }


def ctc_prefix_step(
    prev: torch.Tensor, state: State, candidates: torch.Tensor, start_id: int, end_id: int, blank: int
) -> tuple[torch.Tensor, torch.Tensor, State]:
    """One decoding step. prev [B]: the label just appended to each row's prefix (the start
    token on the first step); it must be one of the last step's candidates or `end_id`.
    candidates [B, K]: the next labels to score (the attention decoder's best few: scoring
    every label costs V / K times more); never the blank or the start token.

    Returns the score of each candidate [B, K], psi(g + c) - psi(g), the score of ending the
    prefix [B], psi(g + eos) - psi(g), and the new CTC state. A row whose prefix CTC already
    rules out (psi(g) = -inf, e.g. longer than the input) scores 0 everywhere: the attention
    decoder alone decides it.
    """
    x, lengths = state["ctc_x"], state["ctc_len"]  # [B, T, V], [B]
    batch, frames, _ = x.shape
    # Where prev sits among the last step's candidates (a finished row's prev is the end token:
    # any slot will do, its scores are not used).
    slot = (state["ctc_labels"] == prev.unsqueeze(1)).to(torch.long).argmax(dim=1)  # [B]
    r_g = state["ctc_r"].gather(3, slot.view(batch, 1, 1, 1).expand(batch, frames, 2, 1)).squeeze(3)  # [B, T, 2]
    psi_g = state["ctc_psi"].gather(1, slot.view(batch, 1)).squeeze(1)  # [B]
    rn, rb = r_g[..., 0], r_g[..., 1]  # [B, T]
    count = candidates.shape[1]
    xc = x.gather(2, candidates.unsqueeze(1).expand(batch, frames, count))  # [B, T, K]
    repeat = (candidates == prev.unsqueeze(1)).unsqueeze(1)  # [B, 1, K]: c is g's last label
    phi = torch.where(repeat, rb.unsqueeze(-1), torch.logaddexp(rn, rb).unsqueeze(-1))  # [B, T, K]
    empty = torch.where(prev == start_id, 0.0, NEG_INF).to(x.dtype).view(batch, 1, 1).expand(batch, 1, count)
    # r^n(g+c): the first label may start at frame 0 only when g is empty.
    emitted = xc.cumsum(1)  # [B, T, K]
    starts = torch.cat([empty, phi[:, :-1] - emitted[:, :-1]], dim=1)
    rn_new = emitted + torch.logcumsumexp(starts, dim=1)
    blanks = x[..., blank].cumsum(1).unsqueeze(-1)  # [B, T, 1]
    ends = torch.cat([x.new_full((batch, 1, count), NEG_INF), rn_new[:, :-1] - blanks[:, :-1]], dim=1)
    rb_new = blanks + torch.logcumsumexp(ends, dim=1)
    real = torch.arange(frames, device=x.device).view(1, frames, 1) < lengths.view(batch, 1, 1)
    terms = torch.cat([empty, phi[:, :-1]], dim=1) + xc  # [B, T, K]: c first emitted at frame t
    psi = torch.logsumexp(terms.masked_fill(~real, NEG_INF), dim=1)  # [B, K]
    last = (lengths - 1).clamp_min(0).view(batch, 1)
    psi_end = torch.logaddexp(rn.gather(1, last), rb.gather(1, last)).squeeze(1)  # [B]
    possible = torch.isfinite(psi_g)
    score = torch.where(possible.unsqueeze(1), psi - psi_g.unsqueeze(1), torch.zeros_like(psi))
    end_score = torch.where(possible, psi_end - psi_g, torch.zeros_like(psi_end))
    new_state = {"ctc_x": x, "ctc_len": lengths, "ctc_labels": candidates,
                 "ctc_r": torch.stack([rn_new, rb_new], dim=2), "ctc_psi": psi}  # fmt: skip
    return score, end_score, new_state
