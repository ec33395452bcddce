"""Features of a cached split: computed once, kept beside its waves, mapped back later; and the
features training validates on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmserve.plugins.speech.data import SAMPLE_RATE, SpeechClips
from mmserve.plugins.speech.evaluate import SILENCE_PAD_S, clip_features
from mmserve.plugins.speech.feature_cache import features_path, split_features
from mmserve.plugins.speech.features import FeatureConfig, LogMel
from mmserve.plugins.speech.train import validation_set


def write_split(folder, lengths=(8000, 12345, 401)):
    """A split folder as data.build_split leaves it: int16 waves end to end plus index.json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 3000).astype(np.int16) for n in lengths]
    ends = np.cumsum(lengths)
    clips = [{"start": int(e - n), "end": int(e), "text": f"clip {i}"} for i, (e, n) in enumerate(zip(ends, lengths))]
    np.save(folder / "waves.npy", np.concatenate(waves))
    (folder / "index.json").write_text(json.dumps({"sample_rate": SAMPLE_RATE, "clips": clips}))
    return SpeechClips(folder)


def test_stored_features_are_the_computed_ones_and_the_second_run_reads_them(tmp_path, monkeypatch):
    clips = write_split(tmp_path / "train")
    featurizer = LogMel(FeatureConfig(n_mels=16))
    fresh = clip_features(clips, featurizer)
    first = split_features(clips, featurizer)
    assert features_path(clips.directory, featurizer.config).is_file()
    assert [f.shape for f in first] == [f.shape for f in fresh]
    for stored, computed in zip(first, fresh):
        assert stored.dtype == torch.float32
        torch.testing.assert_close(stored, computed, atol=4e-3, rtol=1e-3)  # float16 on disk

    def no_computing(*args):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(LogMel, "forward", no_computing)
    again = split_features(clips, featurizer)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [p.name for p in clips.directory.iterdir() if "partial" in p.name] == []


def test_other_feature_settings_get_their_own_file(tmp_path):
    clips = write_split(tmp_path / "train")
    small, large = LogMel(FeatureConfig(n_mels=16)), LogMel(FeatureConfig(n_mels=40))
    assert features_path(clips.directory, small.config) != features_path(clips.directory, large.config)
    assert split_features(clips, small)[0].shape[1] == 16
    assert split_features(clips, large)[0].shape[1] == 40


def test_a_file_that_does_not_fit_the_clips_is_refused(tmp_path):
    clips = write_split(tmp_path / "train")
    featurizer = LogMel(FeatureConfig(n_mels=16))
    np.save(features_path(clips.directory, featurizer.config), np.zeros((5, 16), np.float16))
    with pytest.raises(AssertionError, match="delete it"):
        split_features(clips, featurizer)


def test_training_validates_on_every_set_and_on_the_val_clips_padded_when_asked(tmp_path):
    val, voices = write_split(tmp_path / "val"), write_split(tmp_path / "val-voices", lengths=(4000, 6000))
    featurizer = LogMel(FeatureConfig(n_mels=16, hop_length=160))
    plain, plain_texts = validation_set([val, voices], featurizer)
    expected = clip_features(val, featurizer) + clip_features(voices, featurizer)
    assert len(plain) == 5 and all(torch.equal(a, b) for a, b in zip(plain, expected))
    assert plain_texts == ["clip 0", "clip 1", "clip 2", "clip 0", "clip 1"]

    padded, padded_texts = validation_set([val, voices], featurizer, padded=True)
    assert all(torch.equal(a, b) for a, b in zip(padded[:5], plain))
    # The val clips once more (not the other sets), each with its background on both sides.
    assert padded_texts == plain_texts + ["clip 0", "clip 1", "clip 2"]
    extra_frames = round(2 * SILENCE_PAD_S * SAMPLE_RATE / 160)
    assert [len(x) for x in padded[5:]] == [len(x) + extra_frames for x in plain[:3]]
