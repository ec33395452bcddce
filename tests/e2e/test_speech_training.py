"""The speech training recipe end to end on a few espeak-ng clips: data, extra clips (written
before training or by background processes), validation, the best weights on disk."""

from __future__ import annotations

import shutil

import pytest

from mmserve.plugins.speech import data, random_voices
from mmserve.plugins.speech.checkpoint import load_speech_model
from mmserve.plugins.speech.feature_cache import features_path
from mmserve.plugins.speech.train import train_speech
from mmserve.plugins.task import TrainOptions
from mmserve.plugins.tracking import MemoryRunLogger

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

SETTINGS = {"train_clips": 12, "val_clips": 3, "test_clips": 3, "n_mels": 16, "conv_channels": 4, "conv_dim": 16,
            "listener_hidden": 8, "embed_dim": 8, "speller_hidden": 16, "attn_dim": 8, "ctc_pretrain_steps": 2,
            "silence_percent": 20, "max_length": 20, "progress": False}  # fmt: skip


def train(tmp_path, name: str, **extra):
    logger = MemoryRunLogger()
    options = TrainOptions(output_dir=tmp_path / name, epochs=2, batch_size=4, max_steps=6,
                           extra={**SETTINGS, "data_dir": str(tmp_path / "data"), **extra})  # fmt: skip
    return train_speech(options, logger), logger


def pool_sizes(logger: MemoryRunLogger) -> list[float]:
    return [m["train_pool"] for _, m in logger.metrics if "train_pool" in m]


def test_training_with_extra_clips_written_first_or_by_the_stream(tmp_path):
    sizes = {"train": 12, "val": 3, "test": 3}
    result, logger = train(tmp_path, "first", extra_train_clips=6)
    # 12 clips + 6 extra, and 20 % as many silent ones (2 after the 12, 1 more after the 6)
    assert set(pool_sizes(logger)) == {21}
    assert load_speech_model(result.artifact_dir).config.listener.hidden_dim == 8
    assert {"val_cer", "val_wer", "val_loss", "best_step"} <= set(result.metrics)
    assert result.metrics["val_cer"] >= 0
    # The shards now cached, the stream hands them over at the first epoch: the same pool.
    assert (data.split_dir(tmp_path / "data", "train", sizes).parent / "train-extra").is_dir()
    _, logger = train(tmp_path, "streamed", extra_train_clips=6, extra_clip_processes=1)
    assert set(pool_sizes(logger)) == {21}
    # Every training folder keeps its features for the next run; val is computed afresh.
    featurizer_config = load_speech_model(result.artifact_dir).config.features
    parent = data.split_dir(tmp_path / "data", "train", sizes).parent
    kept = sorted(p.parent.name for p in parent.rglob(features_path(".", featurizer_config).name))
    assert kept == ["0000000-0000006", "train"]


def test_training_with_new_speakers_validates_on_them_and_on_padded_val_clips_too(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))  # the espeak-ng copy with the random speakers
    sizes = {"train": 12, "val": 3, "test": 3}
    result, logger = train(tmp_path, "voices", new_speaker_clips=5, varied_speaker_clips=3, accent_clips=2,
                           val_new_speakers=True, val_padded=True)  # fmt: skip
    # 12 + 5 new-speaker + 3 varied-speaker + 2 accented clips, and 20 % as many silent ones
    assert set(pool_sizes(logger)) == {26}
    parent = data.split_dir(tmp_path / "data", "train", sizes).parent
    for split, count in (("train-voices", 5), ("train-voices-varied", 3), ("train-accents", 2)):
        written = data.SpeechClips(parent / split / f"0000000-{count:07d}")
        speakers = {s.name for s in random_voices.split_speakers(split)}
        assert len(written) == count and all(m["voice"].partition("+")[2] in speakers for m in written.clips)
    assert len(data.SpeechClips(data.split_dir(tmp_path / "data", "val-voices", sizes))) == 3
    assert logger.params["val_utterances"] == 3 + 3 + 3  # val, val-voices, val padded
    assert result.metrics["val_cer"] >= 0


def test_a_trained_model_grows_listener_blocks_and_trains_on(tmp_path):
    small, _ = train(tmp_path, "small", keep_best=1)
    kept = list((small.artifact_dir / "checkpoints").iterdir())  # each new best, the newest one kept
    assert len(kept) == 1 and kept[0].name == f"step-{int(small.metrics['best_step'])}"
    assert (kept[0] / "weights.safetensors").read_bytes() == (small.artifact_dir / "weights.safetensors").read_bytes()
    # grown, and on two-sentence recordings (every batch joined in pairs) padded with background
    grown, logger = train(tmp_path, "grown", init_from=str(small.artifact_dir), listener_blocks_4x=1,
                          listener_blocks_8x=1, listener_block_hidden=4, join_prob=1.0, edge_pad_seconds=0.2)  # fmt: skip
    model = load_speech_model(grown.artifact_dir)
    assert (model.config.listener.blocks_4x, model.config.listener.blocks_8x) == (1, 1)
    assert model.listener.blocks8[0].out.weight.abs().sum() > 0  # it trained
    with pytest.raises(AssertionError, match="beyond growing"):
        train(tmp_path, "other", init_from=str(small.artifact_dir), ctc=False)


def test_training_starts_before_the_stream_has_written_anything(tmp_path):
    # 2,000 extra clips take minutes to write; six steps take seconds. Training must not wait
    # for them, and must stop the writers when it ends.
    import multiprocessing

    before = set(multiprocessing.active_children())
    result, logger = train(tmp_path, "early", extra_train_clips=2000, extra_clip_processes=1)
    assert min(pool_sizes(logger)) == 12 + 2
    assert result.metrics["best_step"] <= 6
    assert not [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]


def test_the_lm_and_the_decoding_weights_of_a_trained_artifact(tmp_path, capsys, monkeypatch):
    import json

    from mmserve.plugins.speech import lm, tune

    result, _ = train(tmp_path, "tuned")
    lm.main(["--out", str(result.artifact_dir), "--sentences", "300", "--train-clips", "12", "--val-clips", "3",
             "--test-clips", "3"])  # fmt: skip
    assert load_speech_model(result.artifact_dir).lm is not None
    tune.main(["--model-dir", str(result.artifact_dir), "--ctc-weights", "0.2", "0.6", "--lm-weights", "0", "0.5",
               "--beam", "2", "--stats-margin-s", "0.2", "--write"])  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if "val beam WER" in line]
    assert len(lines) == 4  # every pair scored on the val clips
    written = json.loads((result.artifact_dir / "config.json").read_text())
    scored = [(float(line.split("WER ")[1].split("%")[0]), float(line.split("CER ")[1].split("%")[0]), line) for line in lines]
    best = min(scored)[2]  # by WER, then CER (a tiny model's WER ties at 100 %)
    assert f"ctc {written['ctc_decode_weight']:.2f}  lm {written['lm_weight']:.2f}" in best
    assert written["features"]["stats_margin_s"] == 0.2  # the normalisation it was tuned with
    tune.main(["--model-dir", str(result.artifact_dir), "--silence-report", "0.4", "1000"])
    report = [line for line in capsys.readouterr().out.splitlines() if "val greedy WER" in line]
    assert [line.split(" s ")[0] for line in report] == ["keep 0.4", "keep 1000"] and all("padded" in line for line in report)
    tune.main(["--model-dir", str(result.artifact_dir), "--segment-report", "2", "5", "--beam", "1"])
    report = [line for line in capsys.readouterr().out.splitlines() if line.startswith("segments up to")]
    assert [line.split(" s,")[0] for line in report] == ["segments up to 2", "segments up to 5"]
    assert all(f"{name} " in line for line in report for name in ("as they are", "padded", "2 a recording", "4 a recording"))
    assert json.loads((result.artifact_dir / "config.json").read_text()) == written  # a report writes nothing
    monkeypatch.setenv("MMSERVE_DATA_DIR", str(tmp_path))  # the espeak-ng copy with the random speakers
    tune.main(["--model-dir", str(result.artifact_dir), "--ctc-weights", "0.2", "--lm-weights", "0", "--beam", "1",
               "--padded", "--new-speakers"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert [line.split("(")[-1] for line in out if "val beam WER" in line] == ["as they are)", "padded)", "new speakers)"]
    assert "(the mean of as they are, padded, new speakers)" in out[-1]


def test_the_evaluation_of_a_trained_artifact(tmp_path):
    from mmserve.plugins.speech.evaluate import evaluate_artifact

    result, _ = train(tmp_path, "evaluated")
    logger = MemoryRunLogger()
    metrics = evaluate_artifact(result.artifact_dir, logger, pocketsphinx_clips=0, progress=False)
    rates = {f"{decoding}_{rate}" for decoding in ("greedy", "beam", "ctc_greedy") for rate in ("wer", "cer")}
    assert rates | {"beam_wer_silence_padded", "beam_wer_two_sentences", "beam_wer_long_form"} <= set(metrics)
    assert metrics["clips"] == 3 and metrics["long_form_recordings"] == 1  # the 3 test clips in one recording
    assert metrics["two_sentences_recordings"] == 1  # clips 1 and 2; the third is left over
    assert all(v >= 0 for v in metrics.values())
    assert logger.metrics and "test_samples.txt" in logger.artifacts

