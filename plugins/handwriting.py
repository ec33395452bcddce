"""Real handwritten digits for the built-in demo data: scikit-learn's 1,797 8x8 digits, split
once into disjoint train / val / test samples, so a test split never shows handwriting that
training saw. The digit-scene (captioning) and digit-clip (action) generators both draw here.
"""

from __future__ import annotations

import functools

import numpy as np

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
# Fixed and independent of any generator seed, so no seed can move test handwriting into training.
SPLIT_SEED = 1797


@functools.lru_cache(maxsize=1)
def digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 handwritten digits: images float32 [1797, 8, 8] in 0..1, labels int [1797]."""
    from sklearn.datasets import load_digits  # ships with scikit-learn; no download

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@functools.cache
def split_samples(split: str) -> np.ndarray:
    """Indices into `digit_bank()` that examples of `split` may use; the three sets are disjoint."""
    assert split in SPLITS, f"split must be one of {SPLITS}, got {split!r}"
    count = len(digit_bank()[1])
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    ends = np.cumsum([round(f * count) for f in SPLIT_FRACTIONS])
    ends[-1] = count
    start = 0 if split == "train" else ends[SPLITS.index(split) - 1]
    return np.sort(order[start : ends[SPLITS.index(split)]])
