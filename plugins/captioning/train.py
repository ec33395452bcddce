"""Training recipe for the digit-scenes captioner (the bundled demo model).

Teacher forcing with cross-entropy plus the doubly stochastic attention penalty; Adam with
weight decay, warm-up then cosine learning-rate decay, dropout, gradient clipping. Each
epoch logs train/val loss, val BLEU-4 and val digit accuracy, and sample captions; the run
ends with attention plots, a training-curve figure, the artifact directory and (by default)
the test-split scores beside the blind baseline.

Task-specific knobs live in `DEFAULTS` and are overridden through `TrainOptions.extra`
(`mmserve train captioning --set key=value`), so the plain command reproduces the bundled
weights.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmserve.plugins.artifacts import load_weights
from mmserve.plugins.captioning.checkpoint import save_captioner
from mmserve.plugins.captioning.data import DigitScenes, collate_captions, render_scene, scene_vocabulary
from mmserve.plugins.captioning.evaluate import (
    MAX_CAPTION_LENGTH,
    caption_batches,
    digit_accuracy,
    evaluate_test_split,
    score_captions,
)
from mmserve.plugins.captioning.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Captioner,
    CaptionerConfig,
    EncoderConfig,
    caption_loss,
)
from mmserve.plugins.captioning.plots import attention_figure, curves_figure
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.nn.search import greedy_decode
from mmserve.plugins.nn.vocab import Vocabulary
from mmserve.plugins.task import TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger
from mmserve.plugins.training import resolve_settings as resolve_task_settings

DEFAULTS: dict[str, Any] = {
    # data: scenes are generated on the fly; training draws fresh layouts every epoch
    "train_scenes": 24000,
    "val_scenes": 500,
    "test_scenes": 1000,  # final test-split evaluation (0 skips it)
    "max_digits": 4,
    # encoder
    "trunk": "basic",
    "stem_width": 32,
    "stage_widths": [32, 64, 128],
    "stage_strides": [2, 2, 1],  # grid stride 8: a 6 x 14 grid on the 48 x 112 canvas
    "blocks_per_stage": 1,
    "resnet18_layers": 2,
    "pretrained": False,
    "memory_dim": 128,
    "positional": True,
    # decoder (the shared AttentionDecoder: LSTM, Bahdanau attention, beta gate)
    "embed_dim": 48,
    "hidden_dim": 128,
    "attn_dim": 64,
    "dropout": 0.1,
    # optimisation
    "weight_decay": 1e-5,
    "grad_clip": 5.0,
    # lambda of the doubly stochastic attention term. Off by default: most regions of a digit
    # scene are empty background, and pushing attention onto them (0.01) stalled digit learning.
    "attention_penalty": 0.0,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,  # cosine decay ends at lr * this
    # run
    "num_threads": 2,  # torch CPU threads (0 keeps torch's default)
    "fp16": False,  # store weights as fp16 (halves the artifact)
    "progress": True,  # tqdm bars
    "attention_plots": 3,
    # robustness: share of training scenes drawn at another size / canvas shape / background
    # (augment.augmented_pixels); 0 reproduces the original recipe
    "augment": 0.0,
    "init_from": "",  # an artifact directory to fine-tune from (same architecture)
    "time_budget_minutes": 0.0,  # stop training after this long (0: no limit)
}


def resolve_settings(extra: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by `extra` (see mmserve.plugins.training)."""
    return resolve_task_settings("captioning", DEFAULTS, extra)


def build_model(settings: dict[str, Any], vocab: Vocabulary) -> Captioner:
    pretrained = settings["trunk"] == "resnet18" and settings["pretrained"]
    encoder = EncoderConfig(
        trunk=settings["trunk"],
        stem_width=settings["stem_width"],
        stage_widths=tuple(settings["stage_widths"]),
        stage_strides=tuple(settings["stage_strides"]),
        blocks_per_stage=settings["blocks_per_stage"],
        resnet18_layers=settings["resnet18_layers"],
        pretrained=pretrained,
        memory_dim=settings["memory_dim"],
        positional=settings["positional"],
        # ImageNet statistics only matter when starting from ImageNet weights.
        mean=IMAGENET_MEAN if pretrained else (0.5, 0.5, 0.5),
        std=IMAGENET_STD if pretrained else (0.5, 0.5, 0.5),
    )
    decoder = DecoderConfig(
        vocab_size=len(vocab),
        memory_dim=settings["memory_dim"],
        embed_dim=settings["embed_dim"],
        hidden_dim=settings["hidden_dim"],
        attn_dim=settings["attn_dim"],
        cell="lstm",
        num_layers=1,
        dropout=settings["dropout"],
        attention="bahdanau",
        gate_context=True,
    )
    return Captioner(CaptionerConfig(encoder, decoder), vocab)


def _lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(model: Captioner, dataset: DigitScenes, penalty: float) -> tuple[dict[str, float], list[str]]:
    """Val loss (teacher forcing), BLEU-4 and digit accuracy (greedy); also returns the captions."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    items = [dataset[i] for i in range(len(dataset))]
    for start in range(0, len(items), 250):
        images, captions = collate_captions(items[start : start + 250], model.pad_id)
        images, captions = images.to(device), captions.to(device)
        logits, attention = model(images, captions[:, :-1])
        _, ce = caption_loss(logits, captions[:, 1:], attention, model.pad_id, penalty)
        total, count = total + ce.item() * len(images), count + len(images)
    images = torch.stack([image for image, _ in items])
    captions = caption_batches(model, images)
    scenes = [dataset.scene(i) for i in range(len(dataset))]
    scores = score_captions([s.references() for s in scenes], captions)
    return {
        "val_loss": total / count,
        "val_bleu_4": scores["bleu_4"],
        "val_digit_accuracy": digit_accuracy(captions, [s.labels for s in scenes]),
    }, captions


def _log_attention(model: Captioner, dataset: DigitScenes, logger: RunLogger, count: int) -> None:
    if count <= 0:
        return
    model.eval()
    with torch.no_grad():
        images = torch.stack([dataset.image(i) for i in range(count)]).to(next(model.parameters()).device)
        results = greedy_decode(model, model.encode(images), MAX_CAPTION_LENGTH)
    for i, result in enumerate(results):
        words, kept = model.readable_tokens(result.tokens)
        pixels = render_scene(dataset.scene(i))
        rows = result.attention[kept].numpy()  # [len(words), N]
        figure = attention_figure(pixels, words, rows, model.grid_size, " ".join(words))
        logger.log_figure(figure, f"attention/val_{i}.png")


def train_captioner(options: TrainOptions, logger: RunLogger) -> TrainResult:
    s = resolve_settings(options.extra)
    assert options.epochs >= 1, f"epochs must be >= 1, got {options.epochs}"
    assert options.batch_size >= 1, f"batch_size must be >= 1, got {options.batch_size}"
    if s["num_threads"]:
        torch.set_num_threads(s["num_threads"])
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    vocab = scene_vocabulary()
    model = build_model(s, vocab)
    if s["init_from"]:
        load_weights(Path(s["init_from"]), model)  # strict: the architecture must match
    model = model.to(device)
    enc = model.config.encoder
    scenes = partial(DigitScenes, vocab=vocab, image_size=enc.image_size, mean=enc.mean, std=enc.std,
                     seed=options.seed, max_digits=s["max_digits"])  # fmt: skip
    train_set, val_set = scenes("train", s["train_scenes"], augment=s["augment"]), scenes("val", s["val_scenes"])
    loader = DataLoader(
        train_set,
        batch_size=options.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(options.seed),
        collate_fn=partial(collate_captions, pad_id=vocab.pad_id),
    )
    total_steps = options.epochs * len(loader)
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    params = {
        "task": "captioning",
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "max_steps": options.max_steps,
        "total_steps": total_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "grid_size": list(model.grid_size),
        **s,
    }
    logger.log_params(params)

    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, weight_decay=s["weight_decay"])
    schedule = partial(_lr_factor, total=total_steps, warmup=s["warmup_steps"], floor=s["min_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    step, started = 0, time.monotonic()
    budget_s = s["time_budget_minutes"] * 60.0

    def out_of_time() -> bool:
        return budget_s > 0 and time.monotonic() - started > budget_s
    for epoch in range(1, options.epochs + 1):
        train_set.set_epoch(epoch - 1)  # fresh layouts (same handwriting pool) every epoch
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{options.epochs}", disable=not s["progress"], leave=False)
        for images, captions in bar:
            images, captions = images.to(device), captions.to(device)  # [B, 3, H, W], [B, T+1]
            logits, attention = model(images, captions[:, :-1])  # predict token t+1 from tokens <= t
            loss, ce = caption_loss(logits, captions[:, 1:], attention, vocab.pad_id, s["attention_penalty"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            running, seen = running + ce.item() * len(images), seen + len(images)
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step >= total_steps or out_of_time():
                break
        val_metrics, val_captions = validate(model, val_set, s["attention_penalty"])
        row = {"epoch": epoch, "train_loss": running / max(seen, 1), **val_metrics}
        history.append(row)
        logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        samples = [f"{c}\n   refs: {' | '.join(val_set.scene(i).references())}" for i, c in enumerate(val_captions[:8])]
        logger.log_text("\n".join(samples), f"samples/epoch_{epoch:03d}.txt")
        if s["progress"]:
            # stderr, like the bars: stdout stays clean for callers that print JSON results.
            line = ", ".join(f"{k} {v:.4g}" for k, v in row.items()) + f", {time.monotonic() - started:.0f}s"
            tqdm.write(line, file=sys.stderr)
        if step >= total_steps or out_of_time():
            break
    wall = time.monotonic() - started

    _log_attention(model, val_set, logger, s["attention_plots"])
    logger.log_figure(curves_figure(history), "training_curves.png")
    output_dir = options.output_dir
    training = {k: v for k, v in params.items() if k not in ("task", "parameters", "grid_size")}
    save_captioner(model, output_dir, {**training, "steps": step, "wall_seconds": round(wall, 1)}, s["fp16"])

    metrics = {k: float(v) for k, v in history[-1].items() if k != "epoch"}
    metrics["train_wall_seconds"] = wall
    if s["test_scenes"] > 0:
        test = evaluate_test_split(model, logger, s["test_scenes"], s["train_scenes"], s["progress"], s["max_digits"])
        metrics.update({f"test_{k}": v for k, v in test.items()})
    return TrainResult(artifact_dir=output_dir, metrics=metrics, params=params)
