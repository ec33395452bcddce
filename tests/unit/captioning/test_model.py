"""The Show-Attend-Tell model, its loss, the task's postprocess and a training smoke run."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.captioning.checkpoint import load_captioner
from mmserve.plugins.captioning.data import DigitScenes, scene_vocabulary
from mmserve.plugins.captioning.evaluate import evaluate_artifact, score_captions
from mmserve.plugins.captioning.model import Captioner, CaptionerConfig, EncoderConfig, caption_loss
from mmserve.plugins.captioning.plugin import register_tasks
from mmserve.plugins.captioning.task import CaptioningTask
from mmserve.plugins.captioning.train import resolve_settings
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.nn.search import DecodeResult, beam_search, greedy_decode
from mmserve.plugins.task import TensorSpec, TrainOptions
from mmserve.plugins.tracking import MemoryRunLogger

VOCAB = scene_vocabulary()


def tiny_model(**encoder) -> Captioner:
    torch.manual_seed(0)
    enc = EncoderConfig(**{"stem_width": 8, "stage_widths": (8, 16), "memory_dim": 16, **encoder})
    dec = DecoderConfig(vocab_size=len(VOCAB), memory_dim=16, embed_dim=8, hidden_dim=16, attn_dim=8, gate_context=True)
    return Captioner(CaptionerConfig(enc, dec), VOCAB).eval()


def test_encode_gives_a_full_mask_over_the_grid():
    model = tiny_model()
    assert model.grid_size == (6, 14) and (model.bos_id, model.eos_id) == (VOCAB.bos_id, VOCAB.eos_id)
    memory = model.encode(torch.randn(2, 3, 48, 112))
    assert memory.values.shape == (2, 84, 16) and memory.keys.shape == (2, 84, 8)
    assert memory.mask.dtype == torch.bool and memory.mask.all()
    state = model.init_state(memory)
    logits, state, attention = model.step(torch.full((2,), VOCAB.bos_id), state, memory)
    assert logits.shape == (2, len(VOCAB)) and attention.shape == (2, 84)
    torch.testing.assert_close(attention.sum(1), torch.ones(2))
    with pytest.raises(AssertionError, match=r"expected images \[B, 3, 48, 112\]"):
        model.encode(torch.randn(2, 3, 50, 112))


@pytest.mark.parametrize(
    ("encoder", "grid"),
    [
        ({"image_size": (64, 64), "stage_widths": (8, 16, 16), "stage_strides": (2, 2, 1)}, (8, 8)),
        ({"image_size": (33, 47)}, (5, 6)),
        ({"trunk": "resnet18", "resnet18_layers": 2}, (6, 14)),
        ({"trunk": "resnet18", "resnet18_layers": 3, "image_size": (96, 96)}, (6, 6)),
    ],
)
def test_grid_size_matches_the_trunk(encoder, grid):
    model = tiny_model(**encoder)
    assert model.grid_size == grid
    memory = model.encode(torch.randn(1, 3, *model.image_size))
    assert memory.values.shape == (1, grid[0] * grid[1], 16)


def test_loss_ignores_padding_and_penalises_uncovered_regions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[4, 2, 0], [4, 4, 2]])  # 0 = <pad>
    uniform = torch.full((2, 3, 3), 1 / 3)
    _, ce = caption_loss(logits, targets, uniform, pad_id=0, penalty=0.0)
    changed = logits.clone()
    changed[0, 2] = 100.0  # a padded step: must not matter
    torch.testing.assert_close(caption_loss(changed, targets, uniform, 0, 0.0)[1], ce)
    # Row 1 has 3 real steps, so uniform attention covers each region exactly once: no penalty.
    # Row 0 has 2 real steps: each region is covered 2/3 -> 3 * (1/3)^2 = 1/3.
    total, ce2 = caption_loss(logits, targets, uniform, pad_id=0, penalty=0.5)
    torch.testing.assert_close(total - ce2, torch.tensor(0.5 * (1 / 3) / 2))


def test_teacher_forcing_matches_step_by_step_decoding():
    model = tiny_model()
    images = torch.randn(3, 3, 48, 112)
    inputs = torch.randint(4, len(VOCAB), (3, 5))
    logits, attention = model(images, inputs)
    memory = model.encode(images)
    state = model.init_state(memory)
    for t in range(5):
        step_logits, state, step_attention = model.step(inputs[:, t], state, memory)
        torch.testing.assert_close(logits[:, t], step_logits)
        torch.testing.assert_close(attention[:, t], step_attention)


def test_shared_search_agrees_on_the_captioner():
    model = tiny_model()
    memory = model.encode(torch.randn(4, 3, 48, 112))
    greedy = greedy_decode(model, memory, max_length=6)
    beam = beam_search(model, memory, beam_size=1, max_length=6)
    assert [g.tokens for g in greedy] == [b.tokens for b in beam]
    for g in greedy:
        assert g.attention.shape == (len(g.tokens), 84)


def test_postprocess_and_v2_outputs():
    model = tiny_model()
    task = CaptioningTask()
    ids = [VOCAB.stoi[w] for w in ["a", "red", "seven"]]
    attention = torch.softmax(torch.randn(3, 84), dim=1)
    out = task.postprocess(DecodeResult(ids, -1.25, attention), model, include_attention=True)
    assert out["caption"] == "a red seven" and out["tokens"] == ["a", "red", "seven"] and out["score"] == -1.25
    assert [a["token"] for a in out["attention"]] == out["tokens"]
    for row, entry in zip(attention, out["attention"]):
        grid = entry["grid"]
        assert len(grid) == model.grid_size[0] and all(len(r) == model.grid_size[1] for r in grid)
        assert grid[1][2] == round(float(row[1 * 14 + 2]), 4)
        assert sum(map(sum, grid)) == pytest.approx(1.0, abs=1e-3)
    assert "attention" not in task.postprocess(DecodeResult(ids, -1.0, attention), model, include_attention=False)
    assert task.to_v2_outputs(out) == {"CAPTION": "a red seven", "SCORE": -1.25}


def test_task_metadata_and_plugin_hook():
    [task] = register_tasks()
    assert isinstance(task, CaptioningTask) and task.name == "captioning"
    assert task.content_types == ("image/png", "image/jpeg", "image/webp")
    assert task.v2_inputs == (TensorSpec("IMAGE", "BYTES", (1,)),)
    assert [s.name for s in task.v2_outputs] == ["CAPTION", "SCORE"]
    assert task.bundled_artifacts().name == "weights"


def test_settings_are_typed_and_checked():
    s = resolve_settings({"train_scenes": "128", "stage_widths": "16,32", "positional": "false", "dropout": "0.5"})
    assert s["train_scenes"] == 128 and s["stage_widths"] == [16, 32] and s["positional"] is False
    assert s["dropout"] == 0.5
    with pytest.raises(ValueError, match="unknown captioning setting"):
        resolve_settings({"no_such_knob": 1})


def test_score_captions_perfect_and_blind():
    refs = [["a red seven", "red seven"], ["a blue two above a green one"]]
    perfect = score_captions(refs, ["a red seven", "a blue two above a green one"])
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6) and perfect["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert score_captions(refs, ["zero", "zero"])["bleu_1"] < 0.01


TINY = {
    "train_scenes": 48,
    "val_scenes": 8,
    "test_scenes": 8,
    "stem_width": 8,
    "stage_widths": [8, 16],
    "stage_strides": [2, 2],
    "memory_dim": 16,
    "embed_dim": 8,
    "hidden_dim": 16,
    "attn_dim": 8,
    "progress": False,
    "attention_plots": 1,
}


def test_a_few_training_steps_write_a_loadable_artifact(tmp_path):
    logger = MemoryRunLogger()
    options = TrainOptions(output_dir=tmp_path / "model", epochs=2, batch_size=16, max_steps=3, extra=TINY)
    result = CaptioningTask().train(options, logger)
    files = sorted(p.name for p in result.artifact_dir.iterdir())
    assert files == ["config.json", "vocab.json", "weights.safetensors"]
    assert {"train_loss", "val_loss", "val_bleu_4", "val_digit_accuracy", "test_bleu_4"} <= set(result.metrics)
    assert result.params["total_steps"] == 3 and logger.params["hidden_dim"] == 16
    assert [step for step, _ in logger.metrics[:1]] == [1]
    assert "attention/val_0.png" in logger.artifacts and "training_curves.png" in logger.artifacts
    assert any(a.startswith("samples/") for a in logger.artifacts)

    model = CaptioningTask().load_model(result.artifact_dir, torch.device("cpu"))
    assert isinstance(model, Captioner) and not model.training
    assert model.config.encoder.stage_widths == (8, 16) and model.image_size == (48, 112)
    scenes = DigitScenes("test", 2, model.vocab)
    assert len(greedy_decode(model, model.encode(torch.stack([scenes.image(0), scenes.image(1)])), 5)) == 2

    metrics = evaluate_artifact(
        result.artifact_dir, MemoryRunLogger(), test_scenes=8, baseline_train_scenes=32, progress=False
    )
    assert {"bleu_1", "bleu_4", "cider", "digit_accuracy", "baseline_bleu_4", "baseline_digit_accuracy"} <= set(metrics)


def test_loading_rejects_foreign_artifacts(tmp_path):
    (tmp_path / "config.json").write_text('{"task": "speech", "format_version": 1}')
    with pytest.raises(ValueError, match="not a captioning artifact"):
        load_captioner(tmp_path)
