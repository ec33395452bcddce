"""Log-mel features of a cached split, computed once and kept beside its waves.

A training run reads 100,000+ clips, and their features cost ~1.6 ms a clip on one core:
over three minutes at the start of every run, taken from the trainer's one Python thread (on
a GPU machine, the thread that should keep the GPU busy); reading them back costs ~0.1 ms. `split_features` keeps them in the split's folder as
`features-<settings>.npy` (float16: the features are normalised to unit variance, so three
significant digits are plenty, at half the disk) and maps them back on later runs. The
stream's writers compute them with each shard (clip_stream.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmserve.plugins.speech.data import SpeechClips
from mmserve.plugins.speech.features import FeatureConfig, LogMel, frames_for

FEATURE_DTYPE = np.float16


def features_path(directory: Path, config: FeatureConfig) -> Path:
    """The feature file of a split folder for these feature settings (others get their own)."""
    key = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(directory) / f"features-{key}.npy"


def _frame_counts(clips: SpeechClips, config: FeatureConfig) -> list[int]:
    return [frames_for(clip["end"] - clip["start"], config) for clip in clips.clips]


def write_split_features(clips: SpeechClips, featurizer: LogMel, progress: bool = False, desc: str = "features") -> Path:
    """Compute every clip's features with `featurizer` (on its device) into the split's feature
    file, renamed into place when complete, so a reader never sees a partial one."""
    config = featurizer.config
    path = features_path(clips.directory, config)
    counts = _frame_counts(clips, config)
    device = next(featurizer.buffers()).device
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=FEATURE_DTYPE, shape=(sum(counts), config.n_mels))
    offset = 0
    for i in tqdm(range(len(clips)), desc=desc, disable=not progress, leave=False):
        features = featurizer(torch.from_numpy(clips.wave(i)).to(device)).cpu().numpy()
        assert features.shape[0] == counts[i], f"clip {i}: {features.shape[0]} frames, expected {counts[i]}"
        out[offset : offset + counts[i]] = features
        offset += counts[i]
    out.flush()
    del out
    os.replace(partial, path)
    return path


def split_features(clips: SpeechClips, featurizer: LogMel, progress: bool = False, desc: str = "features") -> list[torch.Tensor]:
    """Every clip's features [T, F] (float32, CPU): from the split's feature file, written first
    when it is missing."""
    config = featurizer.config
    path = features_path(clips.directory, config)
    if not path.is_file():
        write_split_features(clips, featurizer, progress, desc)
    stored = np.load(path, mmap_mode="r")
    counts = _frame_counts(clips, config)
    assert stored.shape == (sum(counts), config.n_mels), (
        f"{path} holds {stored.shape}, not the {(sum(counts), config.n_mels)} of {clips.directory}'s clips: delete it"
    )
    ends = np.cumsum(counts)
    return [torch.from_numpy(np.asarray(stored[end - n : end], dtype=np.float32)) for end, n in zip(ends, counts, strict=True)]
