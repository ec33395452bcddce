"""mode=score: a piece's exact negative log-likelihood under the continuation model, computed
as the benchmark evaluation computes it (no primer, teacher forcing, `step_log_probs`), so
anyone can check the published figure through the API."""

from __future__ import annotations

from typing import Any

import torch

from mmserve.plugins.music.data import batches, benchmark_items
from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.tokens import Piece


@torch.inference_mode()
def score_piece(model: MusicModel, piece: Piece) -> list[float]:
    """log p(step t | steps < t) for every step of `piece` (no primer): the terms whose sum over
    the test split, divided by its steps, is the benchmark NLL (evaluate.total_log_prob)."""
    items = benchmark_items([piece])
    assert items, "score_piece needs a piece with at least one step"
    (batch,) = list(batches(items, 1))
    device = next(model.parameters()).device
    log_p = model.step_log_probs(batch.to(device))  # [1, T]
    return [float(v) for v in log_p[0, : len(piece)].double()]


def score_output(step_log_probs: list[float]) -> dict[str, Any]:
    """The JSON answer of mode=score: total NLL in nats, steps, NLL per step, each step's NLL."""
    total = -sum(step_log_probs)
    steps = len(step_log_probs)
    return {
        "mode": "score",
        "num_steps": steps,
        "nll": total,
        "nll_per_step": total / steps if steps else 0.0,
        "step_nll": [-v for v in step_log_probs],
    }
