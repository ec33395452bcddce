"""Extra training clips synthesised in background processes while a model trains.

espeak-ng and the augmentation cost ~50 ms of CPU a clip, so 100,000 fresh clips take an
hour and a half on one core. On a machine with many cores and a GPU, training need not wait:
`ExtraClipStream` hands the shards of data.build_extra_train to a process pool and the
trainer adds each shard to its pool of clips as it lands (`take_ready`). The shards are the
same files build_extra_train writes, so a later run finds them all in the cache. Given the
model's feature settings, a writer computes the shard's features too (feature_cache.py).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import AsyncResult
from pathlib import Path

from mmserve.plugins.speech.data import (
    EXTRA_SHARD_CLIPS,
    SpeechClips,
    build_extra_shard,
    extra_sentences,
    extra_shard_folder,
    extra_shards,
    split_dir,
)
from mmserve.plugins.speech.feature_cache import write_split_features
from mmserve.plugins.speech.features import FeatureConfig, LogMel


def write_shard(parent: Path, texts: list[str], start: int, features: FeatureConfig | None) -> Path:
    """One worker's job: a shard of extra clips and, given feature settings, its features."""
    folder = build_extra_shard(parent, texts, start)
    if features is not None:
        write_split_features(SpeechClips(folder), LogMel(features))
    return folder


class ExtraClipStream:
    """Shards of `count` extra clips: those already in the cache at once, the rest from
    `processes` worker processes in clip order. Call `close` (or use `with`) to stop the
    workers; shards finished so far stay in the cache, a half-written one is written again
    by the next run (build_split renames its files into place only when done)."""

    def __init__(self, cache_dir: Path, sizes: dict[str, int], count: int, processes: int,
                 shard_clips: int = EXTRA_SHARD_CLIPS, features: FeatureConfig | None = None):  # fmt: skip
        assert processes >= 1, f"processes must be >= 1, got {processes}"
        parent = split_dir(cache_dir, "train", sizes).parent
        self._ready: list[Path] = []
        missing: list[tuple[int, int]] = []
        for start, end in extra_shards(count, shard_clips):
            folder = parent / extra_shard_folder(start, end)
            if (folder / "index.json").is_file():
                self._ready.append(folder)
            else:
                missing.append((start, end))
        self._pending: list[AsyncResult] = []
        self._pool = None
        if missing:
            sentences = extra_sentences(sizes, count)
            # spawn, not fork: the trainer has torch's thread pools (and maybe CUDA) running.
            self._pool = multiprocessing.get_context("spawn").Pool(processes)
            self._pending = [self._pool.apply_async(write_shard, (parent, sentences[a:b], a, features)) for a, b in missing]
        self.total_shards = len(self._ready) + len(self._pending)

    @property
    def pending(self) -> int:
        """Shards still being written."""
        return len(self._pending)

    def take_ready(self, wait: bool = False) -> list[Path]:
        """Shard folders finished since the last call (every remaining one if `wait`). A shard
        whose worker failed raises here, in the trainer, with the worker's error."""
        done = [job for job in self._pending if wait or job.ready()]
        self._pending = [job for job in self._pending if job not in done]
        ready, self._ready = self._ready + [job.get() for job in done], []
        return ready

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> ExtraClipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
