"""Long uploads cut at their pauses, and the segments' transcripts joined on the upload's clock."""

from __future__ import annotations

import numpy as np
import torch

from mmserve.plugins.speech.segment import moving_mean, segment_bounds, speech_parts, speech_span
from mmserve.plugins.speech.task import SpeechTask, block_diagonal
from mmserve.plugins.task import Segments

RATE = 16000


def speech_with_pauses(talk_s: list[float], pause_s: float, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Loud noise bursts ("talk") separated by quiet pauses; and where each pause's middle is."""
    rng = np.random.default_rng(seed)
    pieces, middles, t = [], [], 0.0
    for i, talk in enumerate(talk_s):
        pieces.append(rng.standard_normal(int(talk * RATE)) * 0.3)
        t += talk
        if i < len(talk_s) - 1:
            pieces.append(rng.standard_normal(int(pause_s * RATE)) * 0.003)
            middles.append(t + pause_s / 2)
            t += pause_s
    return np.concatenate(pieces).astype(np.float32), middles


def test_short_clips_stay_whole():
    wave, _ = speech_with_pauses([2.0, 2.0], 0.5)
    assert segment_bounds(wave, RATE, max_s=6.0, min_s=2.0) == [(0, len(wave))]


def test_the_moving_mean_reads_the_edges_as_they_are():
    # a constant level stays constant up to both ends (zero padding would read 0 dB, loud, there)
    np.testing.assert_allclose(moving_mean(np.full(40, -60.0), 15), np.full(40, -60.0))
    levels = np.arange(10, dtype=float)
    np.testing.assert_allclose(moving_mean(levels, 3), [1 / 3, 1, 2, 3, 4, 5, 6, 7, 8, 26 / 3])
    assert len(moving_mean(levels, 4)) == 10


def test_long_clips_are_cut_in_the_pauses_and_covered_whole():
    wave, middles = speech_with_pauses([3.0, 2.5, 3.5, 2.0, 3.0], 0.6)
    bounds = segment_bounds(wave, RATE, max_s=6.0, min_s=2.0)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(wave)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous: nothing lost
    assert all(end - start <= 6.0 * RATE for start, end in bounds)
    for _, cut in bounds[:-1]:  # every cut inside a pause, near its middle
        assert min(abs(cut / RATE - m) for m in middles) < 0.3, (cut / RATE, middles)
    assert len(bounds) == 5  # a cut in every pause: a sentence per segment


def test_pauses_too_short_or_segments_too_short_are_not_cut():
    wave, _ = speech_with_pauses([3.0, 0.7, 3.0, 3.0], 0.6)
    bounds = segment_bounds(wave, RATE, max_s=5.0, min_s=1.5)
    # the 0.7 s talk cannot stand alone: it stays with a neighbour, the other pauses are cut
    assert len(bounds) == 3 and all(end - start >= 1.5 * RATE for start, end in bounds)
    short_pauses, _ = speech_with_pauses([3.0, 3.0], 0.1)
    assert len(segment_bounds(short_pauses, RATE, max_s=5.0, min_s=1.5)) == 2  # no pause: cut at the quietest moment


def test_speech_without_pauses_is_still_cut_within_the_limits():
    wave = (np.random.default_rng(1).standard_normal(20 * RATE) * 0.3).astype(np.float32)
    bounds = segment_bounds(wave, RATE, max_s=6.0, min_s=2.0)
    assert all(2.0 * RATE <= end - start <= 6.0 * RATE for start, end in bounds[:-1])
    assert bounds[-1][1] == len(wave)


def test_join_segments_moves_words_and_spans_to_the_uploads_clock():
    outputs = [
        {"text": "hi there", "tokens": list("hi there"), "score": -1.0, "duration": 2.0,
         "words": [{"word": "hi", "start": 0.1, "end": 0.4}, {"word": "there", "start": 0.5, "end": 1.0}],
         "attention": [[1.0, 0.0]] * 8},
        {"text": "", "tokens": [], "score": -0.5, "duration": 1.0, "words": [], "attention": []},
        {"text": "you", "tokens": list("you"), "score": -2.0, "duration": 3.0,
         "words": [{"word": "you", "start": 0.2, "end": 0.6}], "attention": [[0.0, 0.5, 0.5]] * 3},
    ]  # fmt: skip
    joined = SpeechTask().join_segments(outputs, Segments([None] * 3, [0.0, 2.0, 3.0]))
    assert joined["text"] == "hi there you" and "".join(joined["tokens"]) == "hi there you"
    assert joined["score"] == -3.5 and joined["duration"] == 6.0
    assert joined["words"][-1] == {"word": "you", "start": 3.2, "end": 3.6}
    assert joined["segments"] == [{"start": 0.0, "end": 2.0, "text": "hi there"}, {"start": 3.0, "end": 6.0, "text": "you"}]
    attention = np.array(joined["attention"])
    assert attention.shape == (len(joined["tokens"]), 5)  # a row per token, the separator's all zero
    assert attention[8].sum() == 0 and attention[:8, 2:].sum() == 0 and attention[9:, :2].sum() == 0


def test_block_diagonal_places_each_map_on_its_own_positions():
    rows = block_diagonal([[[1.0]], [[0.5, 0.5]]], [1, 1])
    assert rows == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.5]]


def test_speech_preprocess_cuts_long_uploads_into_segments():
    from mmserve.plugins.speech.preprocess import waveform_to_wav
    from mmserve.plugins.task import InputLimits
    from tests.unit.speech.test_speech import tiny_model

    task, model = SpeechTask(), tiny_model()
    wave, _ = speech_with_pauses([3.0, 3.0, 3.0], 0.6)
    data = waveform_to_wav(wave, {"sample_rate": RATE}, RATE)
    inputs = task.preprocess(data, "audio/wav", model, InputLimits())
    assert isinstance(inputs, Segments) and len(inputs.parts) >= 2 and inputs.starts[0] == 0.0
    assert sum(p.shape[0] for p in inputs.parts) >= len(wave) // 160  # every frame in some segment
    short = task.preprocess(waveform_to_wav(wave[: 4 * RATE], {"sample_rate": RATE}, RATE), "audio/wav", model, InputLimits())
    assert isinstance(short, torch.Tensor)


def test_the_segment_length_is_a_task_setting(tmp_path):
    from mmserve.plugins.speech.preprocess import waveform_to_wav
    from mmserve.server.settings import Settings
    from tests.unit.speech.test_speech import tiny_model

    wave, _ = speech_with_pauses([3.0, 3.0, 3.0], 0.6)
    data = waveform_to_wav(wave, {"sample_rate": RATE}, RATE)
    settings = Settings(data_dir=tmp_path, tasks={"speech": {"max_segment_s": 30}})
    whole = SpeechTask().preprocess(data, "audio/wav", tiny_model(), settings.task_input_limits("speech"))
    assert isinstance(whole, torch.Tensor)  # 10.2 s is under the configured 30 s: not cut
    cut = SpeechTask().preprocess(data, "audio/wav", tiny_model(), Settings(data_dir=tmp_path).task_input_limits("speech"))
    assert isinstance(cut, Segments)


def with_quiet_edges(wave: np.ndarray, before_s: float, after_s: float, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    quiet = [rng.standard_normal(int(s * RATE)).astype(np.float32) * 0.003 for s in (before_s, after_s)]
    return np.concatenate([quiet[0], wave, quiet[1]])


def test_speech_span_keeps_the_speech_and_a_margin_of_silence():
    talk, _ = speech_with_pauses([1.0, 1.0], 0.3)
    wave = with_quiet_edges(talk, 1.5, 2.0)
    start, end = speech_span(wave, RATE, margin_s=0.2)
    assert abs(start / RATE - 1.3) < 0.05 and abs((len(wave) - end) / RATE - 1.8) < 0.05
    assert speech_span(talk, RATE, margin_s=0.2) == (0, len(talk))  # no silence to cut
    silence = with_quiet_edges(np.zeros(0, np.float32), 1.0, 1.0)
    assert speech_span(silence, RATE, margin_s=0.2) == (0, len(silence))  # nothing louder than its floor
    assert speech_span(talk[:500], RATE, margin_s=0.2) == (0, 500)  # too short to judge


def test_speech_parts_cut_long_silences_and_cover_every_talk():
    talk, _ = speech_with_pauses([3.0, 2.5, 3.0], 2.0)  # two-second pauses
    wave = with_quiet_edges(talk, 1.5, 1.5)
    parts = speech_parts(wave, RATE, max_s=5.0, min_s=1.5, keep_silence_s=0.5)
    assert len(parts) == 3
    loud = np.abs(wave) > 0.05
    for start, end in parts:  # at most ~0.5 s of silence before and after the talk of each
        assert loud[start : start + int(0.6 * RATE)].any() and loud[end - int(0.6 * RATE) : end].any()
    assert loud[: parts[0][0]].sum() == 0 and loud[parts[-1][1] :].sum() == 0  # no talk left out


def test_silence_around_short_speech_does_not_make_it_long():
    # 4 s of talk with a short pause inside, in 7 s of recording: the silence is cut, not the
    # sentence; only speech longer than max_s is cut at its pauses.
    talk, _ = speech_with_pauses([2.0, 1.8], 0.3)
    wave = with_quiet_edges(talk, 1.5, 1.4)
    [(start, end)] = speech_parts(wave, RATE, max_s=5.0, min_s=1.5, keep_silence_s=0.4)
    assert abs(start / RATE - 1.1) < 0.05 and abs((len(wave) - end) / RATE - 1.0) < 0.05
    assert len(speech_parts(with_quiet_edges(talk, 0.3, 0.3), RATE, max_s=3.5, min_s=1.5, keep_silence_s=0.4)) == 2


def test_a_short_upload_with_leading_silence_keeps_its_clock():
    from mmserve.plugins.speech.preprocess import waveform_to_wav
    from mmserve.plugins.task import InputLimits
    from tests.unit.speech.test_speech import tiny_model

    talk, _ = speech_with_pauses([1.5], 0.0)
    data = waveform_to_wav(with_quiet_edges(talk, 1.5, 0.2), {"sample_rate": RATE}, RATE)
    inputs = SpeechTask().preprocess(data, "audio/wav", tiny_model(), InputLimits())
    assert isinstance(inputs, Segments) and len(inputs.parts) == 1
    assert abs(inputs.starts[0] - (1.5 - SpeechTask.keep_silence_s)) < 0.05  # word times stay on the upload's clock
    assert inputs.length == (len(talk) + int(1.7 * RATE)) / RATE  # so the answer's duration is the upload's
    output = {"text": "", "tokens": [], "score": 0.0, "words": [], "duration": 1.0}
    assert SpeechTask().join_segments([output], inputs)["duration"] == round(inputs.length, 3)


def test_features_can_be_normalised_on_the_speech_alone():
    from mmserve.plugins.speech.features import FeatureConfig, LogMel

    talk, _ = speech_with_pauses([1.0, 1.0], 0.3)
    talk = talk * np.random.default_rng(0).uniform(0.5, 1.5, len(talk)).astype(np.float32)
    padded = with_quiet_edges(talk, 1.0, 1.0)
    lead = int(1.0 * RATE) // 160
    whole = LogMel(FeatureConfig(n_mels=16))
    on_speech = LogMel(FeatureConfig(n_mels=16, stats_margin_s=0.0))
    reference = whole(torch.from_numpy(talk))[5:-5]
    core = slice(lead + 5, lead + 5 + len(reference))
    # the silence around the talk moves whole-utterance statistics; the speech's own do not
    assert (on_speech(torch.from_numpy(padded))[core] - reference).abs().mean() < 0.1
    assert (whole(torch.from_numpy(padded))[core] - reference).abs().mean() > 0.3
    # unset, the setting stays out of the config (and of the feature cache's key)
    assert "stats_margin_s" not in FeatureConfig().to_dict() and FeatureConfig(stats_margin_s=0.2).to_dict()["stats_margin_s"] == 0.2
