"""Random speakers: seeded espeak-ng speaker variants beyond the shipped ones (random_voices.py),
the splits read by them, and espeak-ng speaking with them."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from mmserve.plugins.speech import data, random_voices
from mmserve.plugins.speech.random_voices import FORMANT_SCALE, SPEAKERS, random_variant, split_speakers

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_a_random_variant_is_seeded_and_in_range():
    assert random_variant("a/1") == random_variant("a/1") and random_variant("a/1") != random_variant("a/2")
    speakers = split_speakers("train-voices")
    assert len(speakers) == SPEAKERS == len({s.name for s in speakers})
    for speaker in speakers:
        assert FORMANT_SCALE[0] <= speaker.formant_scale <= FORMANT_SCALE[1]
        for frequency, _, _ in speaker.formants:
            assert 0.93 * speaker.formant_scale <= frequency / 100 <= 1.07 * speaker.formant_scale
        assert 65 <= speaker.pitch[0] < speaker.pitch[1]
    scales = [s.formant_scale for s in speakers]
    assert min(scales) < 0.85 and max(scales) > 1.4  # the whole range is drawn, not a corner of it
    lines = speakers[0].variant_file().splitlines()
    assert lines[:2] == ["language variant", f"name {speakers[0].name}"]
    assert [line.split()[:2] for line in lines if line.startswith("formant")] == [["formant", str(k)] for k in range(9)]


def test_varied_speakers_also_vary_their_voice_source():
    plain, varied = split_speakers("train-voices"), split_speakers("train-voices-varied")
    assert all(s.source == () for s in plain) and not {s.name for s in plain} & {s.name for s in varied}
    assert random_variant("a/1", varied=True) == random_variant("a/1", varied=True)
    drawn = [keyword for s in varied for keyword, _ in s.source]
    for keyword in ("klatt", "breath", "tone", "voicing", "consonants"):
        assert 5 < drawn.count(keyword) < len(varied)  # each trait on some speakers, not all
    for speaker in varied:
        source = dict(speaker.source)
        assert "breath" not in source or "klatt" in source  # espeak-ng breathes through Klatt only
        assert source.get("klatt", (1,))[0] in range(1, 7)  # espeak-ng's Klatt voice sources
        assert speaker.pitch[1] <= 2 * speaker.pitch[0] + 1
        lines = speaker.variant_file().splitlines()  # 5 header lines, 9 formants, then the source
        assert [line.split()[0] for line in lines[14:]] == [keyword for keyword, _ in speaker.source]
    assert max(s.pitch[1] / s.pitch[0] for s in varied) > 1.75  # a wider pitch range than the plain draw's 1.7


def test_accented_speakers_draw_sound_shifts_and_stress_of_their_own():
    accented = split_speakers("train-accents")
    assert all(s.accent == () for split in ("train-voices", "val-voices", "train-voices-varied") for s in split_speakers(split))
    assert all(s.accent for s in accented) and sum(bool(s.source) for s in accented) > 100  # varied speakers too
    shifts = set(random_voices.VOWEL_SHIFTS + random_voices.CONSONANT_SHIFTS)
    for speaker in accented:
        replaced = [values for keyword, values in speaker.accent if keyword == "replace"]
        assert replaced and len({source for _, source, _ in replaced}) == len(replaced)  # one rule a phoneme
        for flags, source, target in replaced:
            pool = random_voices.FINAL_DEVOICING if flags == "01" else shifts
            assert flags in ("00", "01", "02") and (source, target) in pool
        lines = speaker.variant_file().splitlines()
        assert [line.split()[0] for line in lines[-len(speaker.accent) :]] == [keyword for keyword, _ in speaker.accent]
    kinds = [{keyword if keyword != "replace" else f"replace {values[0]}" for keyword, values in s.accent} for s in accented]
    for kind in ("replace 00", "replace 01", "replace 02", "stressLength", "stressAmp"):
        assert sum(kind in drawn for drawn in kinds) in range(6, len(accented))  # on some speakers, not all
    assert len({s.accent for s in accented}) > 0.9 * len(accented)  # accents of their own, not a few shared


def test_new_speaker_splits_have_training_accents_and_speakers_of_their_own():
    train_names = {s.name for s in split_speakers("train-voices")}
    val_names = {s.name for s in split_speakers("val-voices")}
    assert not train_names & val_names
    varied_names = {s.name for s in split_speakers("train-voices-varied")}
    accented_names = {s.name for s in split_speakers("train-accents")}
    assert not varied_names & val_names and not accented_names & (val_names | varied_names)
    for split, names in (("train-voices", train_names), ("val-voices", val_names), ("train-voices-varied", varied_names),
                         ("train-accents", accented_names)):  # fmt: skip
        for index in range(50):
            voice = data.clip_voice(split, index)
            accent, _, variant = voice.name.partition("+")
            assert accent in data.TRAIN_ACCENTS and variant in names and voice.variant.name == variant
            assert voice.split == split
    assert data.clip_voice("train", 0).variant is None  # the shipped speakers' splits are as they were
    sizes = {"train": 30, "val": 5, "test": 5}
    assert data.split_dir("/c", "val-voices", sizes).parent == data.split_dir("/c", "val", sizes).parent


def spectral_centroid(wave: np.ndarray, rate: int = data.SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    return float((np.fft.rfftfreq(len(wave), 1 / rate) * spectrum).sum() / spectrum.sum())


@needs_espeak
def test_espeak_speaks_with_random_speakers(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    speakers = sorted(split_speakers("val-voices"), key=lambda s: s.formant_scale)
    text = "she sells sea shells by the sea shore"
    short, long_ = (data.synthesize(text, data.Voice(f"en-us+{s.name}", 160, 50, 100, s, "val-voices"))
                    for s in (speakers[-1], speakers[0]))  # fmt: skip
    shipped = data.synthesize(text, data.Voice("en-us", 160, 50, 100))
    assert np.abs(short).max() > 0.05 and 1.0 < len(short) / data.SAMPLE_RATE < 5.0  # speech, of a plausible length
    # The shortest vocal tract (highest formants) sounds higher than the longest one.
    assert spectral_centroid(short) > 1.2 * spectral_centroid(long_)
    assert len(short) != len(shipped) or not np.allclose(short, shipped)
    variants = tmp_path / "speech-data" / "espeak-voices" / "val-voices" / "espeak-ng-data" / "voices" / "!v"
    assert {s.name for s in speakers} <= {p.name for p in variants.iterdir()}
    assert random_voices.data_dir_for("val-voices", tmp_path / "speech-data" / "espeak-voices").is_dir()  # made once


@needs_espeak
def test_espeak_speaks_through_a_varied_voice_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    breathy = next(s for s in split_speakers("train-voices-varied") if "breath" in dict(s.source))
    plain = random_voices.RandomVariant(breathy.name, breathy.formant_scale, breathy.formants, breathy.pitch,
                                        breathy.flutter, breathy.roughness)  # fmt: skip
    text = "she sells sea shells by the sea shore"
    wave = data.synthesize(text, data.Voice(f"en-us+{breathy.name}", 160, 50, 100, breathy, "train-voices-varied"))
    assert np.abs(wave).max() > 0.05 and 0.4 < len(wave) / data.SAMPLE_RATE < 6.0  # speech, of a plausible length
    # The same speaker without the Klatt source, written into a split of its own, sounds different.
    monkeypatch.setattr(random_voices, "split_speakers", lambda split, count=0: (plain,))
    other = data.synthesize(text, data.Voice(f"en-us+{plain.name}", 160, 50, 100, plain, "plain-copy"))
    assert len(other) != len(wave) or not np.allclose(other, wave, atol=1e-3)


@needs_espeak
def test_espeak_speaks_with_a_random_accent(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    base = split_speakers("train-voices")[0]
    shifted = random_voices.RandomVariant(base.name, base.formant_scale, base.formants, base.pitch, base.flutter,
                                          base.roughness, accent=(("replace", ("00", "D", "d")), ("replace", ("00", "aI", "OI"))))  # fmt: skip
    monkeypatch.setattr(random_voices, "split_speakers", lambda split, count=0: (shifted if split == "shifted" else base,))
    root = tmp_path / "speech-data" / "espeak-voices"

    def phonemes(split: str, accent: str) -> list[str]:
        path = random_voices.data_dir_for(split, root)
        args = ["espeak-ng", f"--path={path}", "-v", data.espeak_voice_name(f"{accent}+{base.name}"), "-x", "-q", "this time"]
        return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout.split()

    for accent in data.TRAIN_ACCENTS:  # the shifts apply on top of every training accent
        plain, accented = phonemes("plain", accent), phonemes("shifted", accent)
        assert plain != accented and "d" in accented[0] and "OI" in accented[1], (accent, plain, accented)
    text = "this is the time"
    wave = data.synthesize(text, data.Voice(f"en-us+{base.name}", 160, 50, 100, shifted, "shifted"))
    other = data.synthesize(text, data.Voice(f"en-us+{base.name}", 160, 50, 100, base, "plain"))
    assert np.abs(wave).max() > 0.05 and (len(other) != len(wave) or not np.allclose(other, wave, atol=1e-3))


@needs_espeak
def test_the_new_speaker_val_split_reads_the_val_sentences(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))
    sizes = {"train": 30, "val": 4, "test": 5}
    folder = data.build_new_speaker_val(tmp_path / "cache", sizes, workers=2, progress=False)
    clips = data.SpeechClips(folder)
    assert [clips.text(i) for i in range(len(clips))] == data.split_texts(sizes)["val"]
    assert all(FORMANT_SCALE[0] <= m["formant_scale"] <= FORMANT_SCALE[1] for m in clips.clips)
    assert all(0.3 < len(clips.wave(i)) / data.SAMPLE_RATE < 10 for i in range(len(clips)))
