"""Extra training clips written by background processes while training runs."""

from __future__ import annotations

import multiprocessing
import shutil

import numpy as np
import pytest

from mmserve.plugins.speech import data
from mmserve.plugins.speech.clip_stream import ExtraClipStream
from mmserve.plugins.speech.feature_cache import features_path
from mmserve.plugins.speech.features import FeatureConfig, frames_for

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SIZES = {"train": 30, "val": 5, "test": 5}


def test_cached_shards_are_ready_at_once_and_the_rest_come_from_the_workers(tmp_path):
    cached = data.build_extra_train(tmp_path, SIZES, 3, workers=2, progress=False, shard_clips=3)
    with ExtraClipStream(tmp_path, SIZES, 7, processes=2, shard_clips=3) as stream:
        assert stream.total_shards == 3 and stream.pending == 2
        first = stream.take_ready()
        assert cached[0] in first
        rest = stream.take_ready(wait=True)
        assert stream.pending == 0 and stream.take_ready() == []
    folders = sorted(first + rest)
    assert [f.name for f in folders] == ["0000000-0000003", "0000003-0000006", "0000006-0000007"]
    # the very shards a later build_extra_train finds in the cache (and the sentences it expects)
    assert data.build_extra_train(tmp_path, SIZES, 7, progress=False, shard_clips=3) == folders
    spoken = [c.text(i) for c in map(data.SpeechClips, folders) for i in range(len(c))]
    assert spoken == data.extra_sentences(SIZES, 7)


def test_given_feature_settings_the_workers_write_each_shards_features(tmp_path):
    config = FeatureConfig(n_mels=16)
    with ExtraClipStream(tmp_path, SIZES, 4, processes=2, shard_clips=2, features=config) as stream:
        folders = stream.take_ready(wait=True)
    assert len(folders) == 2
    for folder in folders:
        stored = np.load(features_path(folder, config))
        clips = data.SpeechClips(folder)
        frames = sum(frames_for(c["end"] - c["start"], config) for c in clips.clips)
        assert stored.shape == (frames, 16) and np.isfinite(stored).all()


def test_a_failing_worker_raises_in_the_trainer(tmp_path):
    # the training split's folder is a file: the worker cannot write its shard
    data.split_dir(tmp_path, "train", SIZES).parent.parent.mkdir(parents=True, exist_ok=True)
    data.split_dir(tmp_path, "train", SIZES).parent.write_text("not a folder")
    with ExtraClipStream(tmp_path, SIZES, 2, processes=1, shard_clips=2) as stream:
        with pytest.raises(OSError):
            stream.take_ready(wait=True)


def test_close_stops_the_workers(tmp_path):
    before = set(multiprocessing.active_children())
    stream = ExtraClipStream(tmp_path, SIZES, 40, processes=2, shard_clips=20)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    stream.close()
    assert not any(w.is_alive() for w in workers)
    stream.close()  # twice is harmless
