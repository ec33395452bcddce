"""Figures for training runs: per-word attention over the image, and training curves.

Built on `matplotlib.figure.Figure` directly (no pyplot), so nothing touches global backend
state and figures are freed when dropped — safe inside a server or a test run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def attention_figure(
    pixels: np.ndarray, words: Sequence[str], attention: np.ndarray, grid_size: tuple[int, int], title: str = ""
) -> Figure:
    """The image once per word, with that word's attention grid overlaid.

    pixels uint8 [H, W, 3]; attention [T, N] with N = h * w (row-major grid), one row per word.
    """
    h, w = grid_size
    assert attention.ndim == 2 and attention.shape[1] == h * w, f"attention {attention.shape} vs grid {grid_size}"
    assert len(words) == attention.shape[0], f"{len(words)} words vs {attention.shape[0]} attention rows"
    panels = max(len(words), 1)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    height, width = pixels.shape[:2]
    figure = Figure(figsize=(3.0 * columns, 1.6 * rows + 0.4))
    for t in range(panels):
        ax = figure.add_subplot(rows, columns, t + 1)
        ax.imshow(pixels, extent=(0, width, height, 0))
        if words:
            grid = attention[t].reshape(h, w)
            # Stretch the coarse grid over the whole image; bilinear keeps it readable.
            ax.imshow(grid, cmap="inferno", alpha=0.55, extent=(0, width, height, 0), interpolation="bilinear")
            ax.set_title(words[t], fontsize=9)
        ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss (train/val) and validation BLEU-4 / digit accuracy per epoch."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(9, 3.2))
    loss_ax, score_ax = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.legend()
    for key in ("val_bleu_4", "val_digit_accuracy"):
        score_ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    score_ax.set_xlabel("epoch")
    score_ax.set_ylim(0, 1)
    score_ax.legend()
    figure.tight_layout()
    return figure
