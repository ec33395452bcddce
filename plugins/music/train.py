"""Training recipe for the music model (the bundled weights and the Bernoulli baseline).

Teacher forcing; the loss is the benchmark's own quantity, NLL per time step. Adam with
weight decay, dropout, gradient clipping, learning rate halved when validation NLL stalls,
early stopping on validation NLL (the `valid` split only: `test` is never looked at during
training), and a wall-clock budget. The best-validation weights are written.

Task-specific knobs live in `DEFAULTS`, overridden by `mmserve train music --set key=value`:
    mmserve train music --no-register --output-dir plugins/music/weights                 (serial head)
    mmserve train music --no-register --output-dir plugins/music/weights/bernoulli --set head=bernoulli
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from mmserve.plugins.artifacts import load_weights
from mmserve.plugins.music.checkpoint import save_music_model, write_metrics
from mmserve.plugins.music.data import (
    ContinuationSampler,
    HarmonySampler,
    batches,
    benchmark_items,
    harmony_items,
    load_harmony,
    load_quarter,
)
from mmserve.plugins.music.evaluate import total_log_prob
from mmserve.plugins.music.model import EncoderConfig, MusicConfig, MusicModel, NoteHeadConfig
from mmserve.plugins.music.tokens import NUM_PITCHES
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.task import TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger
from mmserve.plugins.training import resolve_settings as resolve_task_settings

DEFAULTS: dict[str, Any] = {
    "data": "quarter",  # quarter (benchmark, continuation) | harmony (16th-note SATB, melody -> ATB)
    "head": "serial",  # serial | bernoulli
    # encoder (BiLSTM over the primer / melody)
    "encoder_cell": "lstm",
    "encoder_embed_dim": 64,
    "encoder_hidden_dim": 128,
    "memory_dim": 128,
    # decoder (the shared AttentionDecoder, one step per time step)
    "cell": "lstm",
    "num_layers": 1,
    "embed_dim": 128,
    "hidden_dim": 256,
    "attn_dim": 64,
    "attention": "bahdanau",
    "dropout": 0.3,
    # note head (serial only)
    "note_hidden_dim": 256,
    "note_dropout": 0.3,
    # data
    "max_shift": 6,  # transpositions in [-6, 6] that keep every note in 21..108
    "primer_prob": 0.25,  # share of training chorales split into primer + continuation
    "max_primer": 32,
    "crop": 0,  # harmony: train on random windows of at most this many steps (0 = whole chorales)
    # optimisation
    "weight_decay": 1e-6,
    "grad_clip": 5.0,
    "patience": 6,  # epochs without validation improvement before halving the lr
    "stop_after": 15,  # epochs without validation improvement before stopping
    "time_budget_minutes": 35.0,
    "init_from": "",  # an artifact directory to continue from (same architecture), e.g. a run cut off by its budget
    # run
    "num_threads": 1,  # torch CPU threads (the machine is shared)
    "fp16": False,
    "progress": True,
}


def resolve_settings(extra: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by `extra` (see mmserve.plugins.training)."""
    s = resolve_task_settings("music", DEFAULTS, extra)
    assert s["data"] in ("quarter", "harmony"), f"data must be quarter or harmony, got {s['data']!r}"
    return s


def build_model(s: dict[str, Any]) -> MusicModel:
    encoder = EncoderConfig(
        cell=s["encoder_cell"], embed_dim=s["encoder_embed_dim"], hidden_dim=s["encoder_hidden_dim"], memory_dim=s["memory_dim"]
    )
    decoder = DecoderConfig(
        vocab_size=NUM_PITCHES,
        memory_dim=s["memory_dim"],
        embed_dim=s["embed_dim"],
        hidden_dim=s["hidden_dim"],
        attn_dim=s["attn_dim"],
        cell=s["cell"],
        num_layers=s["num_layers"],
        dropout=s["dropout"],
        attention=s["attention"],
        output_kind="bernoulli",
    )
    notes = NoteHeadConfig(hidden_dim=s["note_hidden_dim"], dropout=s["note_dropout"])
    return MusicModel(MusicConfig(head=s["head"], encoder=encoder, decoder=decoder, notes=notes))


def curves_figure(history: list[dict[str, float]]) -> Figure:
    """Train and validation NLL per step, per epoch."""
    figure = Figure(figsize=(6, 3.2))
    ax = figure.add_subplot(1, 1, 1)
    epochs = [row["epoch"] for row in history]
    for key in ("train_nll", "val_nll"):
        ax.plot(epochs, [row[key] for row in history], marker=".", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats / time step)")
    ax.legend()
    figure.tight_layout()
    return figure


def train_music(options: TrainOptions, logger: RunLogger) -> TrainResult:
    s = resolve_settings(options.extra)
    assert options.epochs >= 1 and options.batch_size >= 1, "epochs and batch_size must be >= 1"
    torch.set_num_threads(max(s["num_threads"], 1))
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    device = torch.device(options.device)
    model = build_model(s).to(device)
    if s["init_from"]:
        # Continue a run: same architecture (the settings above), weights from its artifact.
        load_weights(Path(s["init_from"]), model)
    if s["data"] == "quarter":
        data = load_quarter()
        sampler: ContinuationSampler | HarmonySampler = ContinuationSampler(
            data["train"], s["max_shift"], s["primer_prob"], s["max_primer"], options.seed
        )
        val_items = benchmark_items(data["valid"])
    else:
        harmony = load_harmony()
        sampler = HarmonySampler(harmony["train"], s["max_shift"], options.seed, s["crop"])
        val_items = harmony_items(harmony["valid"])
    params = {
        "task": "music",
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "max_steps": options.max_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        **s,
    }
    logger.log_params(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, weight_decay=s["weight_decay"])
    history: list[dict[str, float]] = []
    best_val, best_state, best_epoch, stale = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    step, started = 0, time.monotonic()
    budget = s["time_budget_minutes"] * 60.0
    for epoch in range(1, options.epochs + 1):
        model.train()
        total, steps = 0.0, 0
        epoch_batches = list(batches(sampler.epoch(), options.batch_size, rng))
        bar = tqdm(epoch_batches, desc=f"epoch {epoch}/{options.epochs}", disable=not s["progress"], leave=False)
        for batch in bar:
            batch = batch.to(device)
            log_p = model.step_log_probs(batch)  # [B, T]
            n = int(batch.target_lengths.sum())
            loss = -log_p.sum() / n  # NLL per time step: the benchmark's unit
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            optimizer.step()
            step += 1
            total, steps = total + float(loss.detach()) * n, steps + n
            bar.set_postfix(nll=f"{total / steps:.3f}")
            if options.max_steps is not None and step >= options.max_steps:
                break
        val_total, val_steps = total_log_prob(model, val_items)
        val_nll = -val_total / val_steps
        row = {"epoch": epoch, "train_nll": total / max(steps, 1), "val_nll": val_nll, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if val_nll < best_val - 1e-4:
            best_val, best_state, best_epoch, stale = val_nll, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale % s["patience"] == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
        elapsed = time.monotonic() - started
        if s["progress"]:
            line = ", ".join(f"{k} {v:.4g}" for k, v in row.items())
            tqdm.write(f"{line}, best {best_val:.4f} @ {best_epoch}, {elapsed:.0f}s", file=sys.stderr)
        if stale >= s["stop_after"] or elapsed > budget:
            break
        if options.max_steps is not None and step >= options.max_steps:
            break
    wall = time.monotonic() - started
    model.load_state_dict(best_state)
    logger.log_figure(curves_figure(history), "training_curves.png")
    training = {k: v for k, v in params.items() if k not in ("task", "parameters")}
    training.update({"steps": step, "epochs_run": len(history), "best_epoch": best_epoch, "wall_seconds": round(wall, 1)})
    save_music_model(model, options.output_dir, training, s["fp16"])
    metrics = {"val_nll": best_val, "best_epoch": float(best_epoch), "train_wall_seconds": wall,
               "parameters": float(params["parameters"])}  # fmt: skip
    # metrics.json holds numbers only (the registry tags model versions with them); the curve goes beside it.
    write_metrics(options.output_dir, metrics)
    (Path(options.output_dir) / "history.json").write_text(json.dumps(history, indent=1))
    return TrainResult(artifact_dir=options.output_dir, metrics=metrics, params=params)
