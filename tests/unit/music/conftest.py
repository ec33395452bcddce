"""A tiny music model (seconds to build) shared by the music unit tests."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.train import build_model, resolve_settings

TINY = {"encoder_embed_dim": 8, "encoder_hidden_dim": 8, "memory_dim": 12, "embed_dim": 8, "hidden_dim": 16,
        "attn_dim": 8, "note_hidden_dim": 16, "dropout": 0.0, "note_dropout": 0.0}  # fmt: skip


def tiny_model(head: str = "serial", seed: int = 0) -> MusicModel:
    torch.manual_seed(seed)
    model = build_model(resolve_settings({**TINY, "head": head}))
    # Random weights give near-uniform notes; larger output weights make the test distributions peaked
    # and different per row, so equalities cannot hold by accident.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.fixture
def serial_model() -> MusicModel:
    return tiny_model("serial")


@pytest.fixture
def bernoulli_model() -> MusicModel:
    return tiny_model("bernoulli")
