"""From a decoded action sequence and its attention over frames to named, timed actions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmserve.plugins.action.clips import CONNECTIVE

WORDS_PER_ACTION = 3  # subject, verb, word ("seven moves left"); "then" joins actions


@dataclass
class FoundAction:
    subject: str
    action: str  # "moves left"
    tokens: list[int]  # positions of its words in the decoded sequence
    span: tuple[int, int]  # first and last frame, inclusive
    weights: torch.Tensor  # [T] its mean attention over frames


def attention_span(weights: torch.Tensor, fraction: float = 0.5) -> tuple[int, int]:
    """The run of frames around the peak whose weight is at least `fraction` of the peak.

    weights [T] >= 0. Attention trained towards a flat distribution over an action's frames
    gives a plateau; the contiguous part of it around the peak is the action's span.
    """
    assert weights.dim() == 1 and weights.numel() >= 1, f"expected weights [T], got {tuple(weights.shape)}"
    peak = int(weights.argmax())
    floor = float(weights[peak]) * fraction
    start = end = peak
    while start > 0 and float(weights[start - 1]) >= floor:
        start -= 1
    while end < len(weights) - 1 and float(weights[end + 1]) >= floor:
        end += 1
    return start, end


def span_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two inclusive frame ranges."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
    return inter / union if union > 0 else 0.0


def group_actions(words: list[str]) -> list[tuple[str, str, list[int]]]:
    """(subject, action, word positions) per action of a decoded caption's words."""
    groups, current = [], []
    for position, word in enumerate(words):
        if word == CONNECTIVE:
            if current:
                groups.append(current)
            current = []
        else:
            current.append((position, word))
    if current:
        groups.append(current)
    return [(g[0][1], " ".join(w for _, w in g[1:]), [p for p, _ in g]) for g in groups]


def find_actions(words: list[str], frame_attention: torch.Tensor | None) -> list[FoundAction]:
    """Actions of a decoded caption, each with its span from the mean attention of its words.

    frame_attention [len(words), T]: each word's attention over the clip's frames.
    """
    found = []
    for subject, action, positions in group_actions(words):
        if frame_attention is None or frame_attention.shape[-1] == 0:
            weights, span = torch.zeros(0), (0, -1)
        else:
            weights = frame_attention[positions].float().mean(0)
            span = attention_span(weights)
        found.append(FoundAction(subject, action, positions, span, weights))
    return found
