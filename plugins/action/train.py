"""Training recipe for the digit-action model (the bundled demo weights).

Teacher forcing with cross-entropy plus supervised attention (each action's words attend to
its true frames); Adam with weight decay, warm-up then cosine decay, dropout, gradient
clipping. Fresh clips every epoch from the training handwriting. Each epoch logs train loss,
val exact-sequence accuracy and val localisation.

Task-specific knobs live in `DEFAULTS`, overridden with `mmserve train action --set key=value`.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmserve.plugins.action.checkpoint import save_recognizer
from mmserve.plugins.action.data import ActionClips, action_vocabulary, collate_training
from mmserve.plugins.action.evaluate import evaluate_model
from mmserve.plugins.action.model import ActionConfig, ActionRecognizer, ClipEncoderConfig, action_loss
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.nn.vocab import Vocabulary
from mmserve.plugins.task import TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger
from mmserve.plugins.training import resolve_settings as resolve_task_settings

DEFAULTS: dict[str, Any] = {
    # data: clips are generated on the fly, new ones every epoch
    "train_clips": 6000,
    "val_clips": 300,
    # encoder
    "stem_width": 8,
    "stage_widths": [16, 32],
    "frame_dim": 128,
    "pool_grid": [2, 3],
    "temporal": "bigru",  # bigru | bilstm | none (the mean-pooled baseline)
    "temporal_hidden": 64,
    # decoder (the shared AttentionDecoder)
    "cell": "lstm",
    "attention": "bahdanau",
    "embed_dim": 32,
    "hidden_dim": 128,
    "attn_dim": 64,
    "dropout": 0.1,
    # optimisation
    "attention_supervision": 0.5,
    "presence_weight": 1.0,  # auxiliary "which subjects appear" loss on the frame features (0: off)  # weight of the attention-on-true-span term (0: off)
    "weight_decay": 1e-5,
    "grad_clip": 5.0,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,
    # run
    "num_threads": 1,  # torch CPU threads: 1 leaves the other core to parallel work
    "fp16": False,
    "progress": True,
}


def resolve_settings(extra: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by `extra` (see mmserve.plugins.training)."""
    return resolve_task_settings("action", DEFAULTS, extra)


def build_model(settings: dict[str, Any], vocab: Vocabulary, mode: str = "sequence") -> ActionRecognizer:
    encoder = ClipEncoderConfig(
        stem_width=settings["stem_width"],
        stage_widths=tuple(settings["stage_widths"]),
        stage_strides=(2,) * len(settings["stage_widths"]),
        frame_dim=settings["frame_dim"],
        pool_grid=tuple(settings["pool_grid"]),
        temporal=settings["temporal"],
        temporal_hidden=settings["temporal_hidden"],
    )
    decoder = DecoderConfig(
        vocab_size=len(vocab),
        memory_dim=encoder.memory_dim,
        embed_dim=settings["embed_dim"],
        hidden_dim=settings["hidden_dim"],
        attn_dim=settings["attn_dim"],
        cell=settings["cell"],
        dropout=settings["dropout"],
        attention=settings["attention"],
    )
    return ActionRecognizer(ActionConfig(encoder, decoder, mode, presence_head=settings["presence_weight"] > 0), vocab)


def _lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_recognizer(options: TrainOptions, logger: RunLogger) -> TrainResult:
    s = resolve_settings(options.extra)
    assert options.epochs >= 1 and options.batch_size >= 1, "epochs and batch_size must be >= 1"
    if s["num_threads"]:
        torch.set_num_threads(s["num_threads"])
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    vocab = action_vocabulary()
    model = build_model(s, vocab).to(device)
    train_set = ActionClips("train", s["train_clips"], vocab, seed=options.seed, size=model.frame_size)
    loader = DataLoader(
        train_set,
        batch_size=options.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(options.seed),
        collate_fn=partial(collate_training, pad_id=vocab.pad_id),
    )
    total_steps = options.epochs * len(loader)
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    params = {"task": "action", "epochs": options.epochs, "batch_size": options.batch_size,
              "learning_rate": options.learning_rate, "seed": options.seed, "max_steps": options.max_steps,
              "total_steps": total_steps, "parameters": sum(p.numel() for p in model.parameters()), **s}  # fmt: skip
    logger.log_params(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, weight_decay=s["weight_decay"])
    schedule = partial(_lr_factor, total=total_steps, warmup=s["warmup_steps"], floor=s["min_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    step, started = 0, time.monotonic()
    for epoch in range(1, options.epochs + 1):
        train_set.set_epoch(epoch - 1)
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{options.epochs}", disable=not s["progress"], leave=False)
        for clips, captions, spans in bar:
            clips, captions = clips.to(device), captions.to(device)  # [B, T, 3, H, W] + lengths, [B, L+1]
            logits, attention, presence = model.forward_train(clips, captions[:, :-1])  # token t+1 from tokens <= t
            loss, ce = action_loss(logits, captions[:, 1:], attention, vocab.pad_id, spans, s["attention_supervision"])
            if presence is not None and s["presence_weight"] > 0:
                targets = model.presence_targets(captions)
                loss = loss + s["presence_weight"] * F.binary_cross_entropy_with_logits(presence, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            running, seen = running + ce.item() * len(clips), seen + len(clips)
            bar.set_postfix(loss=f"{running / seen:.3f}", total=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if step >= total_steps:
                break
        val, _, _ = evaluate_model(model, s["val_clips"], progress=False, split="val", seed=options.seed)
        row = {"epoch": epoch, "train_loss": running / max(seen, 1),
               **{f"val_{k}": v for k, v in val.items() if k not in ("clips", "actions")}}  # fmt: skip
        history.append(row)
        logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if s["progress"]:
            keys = ("train_loss", "val_exact_sequence_accuracy", "val_per_action_accuracy", "val_localisation_iou50")
            line = ", ".join(f"{k} {row[k]:.4g}" for k in keys)
            tqdm.write(f"epoch {epoch}: {line}, {time.monotonic() - started:.0f}s", file=sys.stderr)
        # Written every epoch, so a run cut short still leaves its latest model behind.
        wall = time.monotonic() - started
        training = {k: v for k, v in params.items() if k not in ("task", "parameters")}
        save_recognizer(model, options.output_dir, {**training, "steps": step, "epochs_done": epoch,
                                                    "wall_seconds": round(wall, 1)}, s["fp16"])  # fmt: skip
        if step >= total_steps:
            break
    metrics = {k: float(v) for k, v in history[-1].items() if k != "epoch"}
    metrics["train_wall_seconds"] = wall
    return TrainResult(artifact_dir=options.output_dir, metrics=metrics, params=params)
