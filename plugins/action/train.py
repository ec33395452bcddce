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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmserve.plugins.action.checkpoint import save_recognizer
from mmserve.plugins.action.data import ActionClips, action_label_vocabulary, action_vocabulary, collate_training
from mmserve.plugins.action.evaluate import evaluate_model
from mmserve.plugins.action.model import ActionConfig, ActionRecognizer, ClipEncoderConfig, action_loss, clip_input
from mmserve.plugins.action.pretrain import pretrain_trunk
from mmserve.plugins.artifacts import load_weights, read_weights
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.nn.vocab import Vocabulary
from mmserve.plugins.task import TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger
from mmserve.plugins.training import resolve_settings as resolve_task_settings

DEFAULTS: dict[str, Any] = {
    # sequence: "seven moves left then ..." | label: one class token per clip (single-action clips)
    "mode": "sequence",
    # data: clips are generated on the fly; epoch e uses clip set e % clip_pool, rendered once
    # and kept in memory (0: a new set every epoch, nothing kept)
    "train_clips": 6000,
    "clip_pool": 4,
    "val_clips": 300,
    # distort the named digits' handwriting (shear, aspect, stroke width) in training clips
    "augment_handwriting": False,
    # encoder
    "stem_width": 16,
    "stem_stride": 2,
    "stage_widths": [32, 64],
    "frame_dim": 128,
    "pool_grid": [2, 3],
    "temporal": "bigru",  # bigru | bilstm | none (the mean-pooled baseline)
    "temporal_hidden": 64,
    "input": "pixels",  # pixels | motion (grey level plus differences to the neighbouring frames)
    "regions": 1,  # vertical strips of the frame as separate memory positions (see ClipEncoderConfig)
    # decoder (the shared AttentionDecoder)
    "cell": "lstm",
    "attention": "bahdanau",
    "embed_dim": 32,
    "hidden_dim": 128,
    "attn_dim": 64,
    "dropout": 0.1,
    # optimisation
    "attention_supervision": 0.5,  # weight of the attention-on-true-span term (0: off)
    "presence_weight": 1.0,  # auxiliary "which subjects appear" loss on the frame features (0: off)
    "weight_decay": 1e-5,
    "grad_clip": 5.0,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,
    # frame-trunk pretraining on single frames (pretrain.py): which digit is where (0: off)
    "pretrain_steps": 0,
    "pretrain_lr": 2e-3,
    # after pretraining, keep the stem and this many first stages fixed (their full-resolution
    # convolutions are most of a frame's cost; fixed, they need no backward pass)
    "freeze_stages": 0,
    # with every stage fixed: compute each pooled clip's trunk grid once and keep it (fp16),
    # so a training step runs only the projection, the temporal RNN and the decoder
    "cache_grids": False,
    "init_from": "",  # an artifact directory to start from (same architecture)
    # with init_from: take only the parameters under these name prefixes, comma-separated
    # (e.g. "encoder.cnn,decoder": the no-temporal baseline on a trained model's trunk)
    "init_parts": "",
    # a one-region artifact to start a `regions` > 1 model from: every weight taken as it is,
    # and each region's projection from the columns of the frame projection that see its strip
    "init_regions_from": "",
    # run
    "eval_every": 0,  # steps between validations (best-on-val weights are kept); 0: once per epoch
    "time_budget_s": 0.0,  # wall-clock budget of the whole run incl. pretraining (0: none)
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
        stem_stride=settings["stem_stride"],
        stage_widths=tuple(settings["stage_widths"]),
        stage_strides=(2,) * len(settings["stage_widths"]),
        frame_dim=settings["frame_dim"],
        pool_grid=tuple(settings["pool_grid"]),
        temporal=settings["temporal"],
        temporal_hidden=settings["temporal_hidden"],
        input=settings["input"],
        regions=settings["regions"],
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


def _lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Warm-up then cosine decay to `floor`, over progress 0..1 (warmup: its share of it)."""
    if progress < warmup:
        return min(1.0, (progress + 1e-9) / warmup)
    progress = min((progress - warmup) / max(1.0 - warmup, 1e-9), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class GridClips(Dataset):
    """A pooled ActionClips whose items carry the fixed trunk's grid (fp16 [T, C, h, w]) instead of
    pixels, computed the first time a clip is drawn and kept (~12 KB a frame)."""

    def __init__(self, clips: ActionClips, model: ActionRecognizer):
        self.clips, self.model = clips, model
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    @torch.no_grad()
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        key = (self.clips.epoch, index)
        spec = self.clips.spec(index)
        if key not in self._cache:
            raw = self.clips.frames(index)
            frames = clip_input(raw.unsqueeze(0), torch.tensor([len(raw)]), self.model.config.encoder)[0]
            device = next(self.model.parameters()).device
            self._cache[key] = self.model.encoder.cnn.body(frames.to(device)).half().cpu()
        ids = torch.tensor(self.clips.vocab.encode(self.clips.caption(spec)), dtype=torch.long)
        return self._cache[key], ids, spec.spans


def load_parts(directory: Path, model: torch.nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Load the parameters under `prefixes` from an artifact's weights into `model` (same
    names and shapes); everything else keeps its fresh initialisation. Returns the names loaded."""
    assert prefixes, "init_parts names no parameter prefix"
    state = read_weights(directory)
    reference = model.state_dict()
    taken = {k: v for k, v in state.items() if k.startswith(prefixes)}
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in taken), f"no parameter under {prefix!r} in {directory}"
    wanted = {k for k in reference if k.startswith(prefixes)}
    assert wanted == set(taken), f"{directory} does not match the model under {prefixes}: {sorted(wanted ^ set(taken))}"
    for name, value in taken.items():
        assert value.shape == reference[name].shape, f"{name}: {tuple(value.shape)} in {directory}, model {tuple(reference[name].shape)}"
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in taken.items()}, strict=False)
    return sorted(taken)


def regions_from(directory: Path, model: ActionRecognizer) -> None:
    """Start a `regions` > 1 model from a one-region artifact of the same trunk: each strip's
    projection gets the old frame projection's weights on that strip's grid columns (and on
    the pooled grid), so at the start a strip's feature is the old frame feature restricted to
    what the strip shows; every other weight is taken as it is."""
    cnn = model.encoder.cnn
    assert cnn.regions > 1, "init_regions_from needs a model with regions > 1"
    state = read_weights(directory)
    weight, bias = state.pop("encoder.cnn.project.0.weight"), state.pop("encoder.cnn.project.0.bias")
    channels, (h, w) = cnn.channels, cnn.grid
    flat = weight[:, : channels * h * w].view(-1, channels, h, w)  # [F, C, h, w]
    pooled = weight[:, channels * h * w :]
    reference = model.state_dict()
    for r, strip in enumerate(flat.chunk(cnn.regions, dim=3)):
        state[f"encoder.cnn.region_project.{r}.0.weight"] = torch.cat([strip.flatten(1), pooled], dim=1)
        state[f"encoder.cnn.region_project.{r}.0.bias"] = bias.clone()
    missing, unexpected = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    assert not missing and not unexpected, f"{directory} does not fit the model: missing {missing}, unexpected {unexpected}"
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})


def _freeze(model: ActionRecognizer, stages: int) -> torch.nn.Module | None:
    """Fix the stem and the first `stages` stages of the frame CNN; returns them (None: nothing fixed)."""
    if stages <= 0:
        return None
    blocks = model.config.encoder.blocks_per_stage
    part = model.encoder.cnn.body[: 3 + stages * blocks]  # conv, batch norm, ReLU, then the blocks
    for param in part.parameters():
        param.requires_grad_(False)
    return part


def _train_mode(model: ActionRecognizer, frozen: torch.nn.Module | None) -> None:
    model.train()
    if frozen is not None:  # fixed layers keep their pretrained batch-norm statistics
        frozen.eval()


def _selection_score(val: dict[str, float]) -> float:
    """Which validation is best: both goals count (exact sequence, or label, and localisation)."""
    return val.get("exact_sequence_accuracy", val.get("label_accuracy", 0.0)) + val["localisation_iou50"]


def train_recognizer(options: TrainOptions, logger: RunLogger) -> TrainResult:
    s = resolve_settings(options.extra)
    assert options.epochs >= 1 and options.batch_size >= 1, "epochs and batch_size must be >= 1"
    if s["num_threads"]:
        torch.set_num_threads(s["num_threads"])
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    budget = s["time_budget_s"] or None
    started = time.monotonic()
    assert s["mode"] in ("sequence", "label"), f"mode must be sequence or label, got {s['mode']!r}"
    label_mode = s["mode"] == "label"
    vocab = action_label_vocabulary() if label_mode else action_vocabulary()
    model = build_model(s, vocab, s["mode"])
    if s["init_regions_from"]:
        regions_from(Path(s["init_regions_from"]), model)
    elif s["init_from"] and s["init_parts"]:
        load_parts(Path(s["init_from"]), model, tuple(p.strip() for p in s["init_parts"].split(",") if p.strip()))
    elif s["init_from"]:
        load_weights(Path(s["init_from"]), model)  # strict: the architecture must match
    model = model.to(device)
    pretrained = None
    if s["pretrain_steps"] > 0:
        encoder = model.config.encoder
        pretrained = pretrain_trunk(model.encoder.cnn, encoder, s["pretrain_steps"], lr=s["pretrain_lr"], seed=options.seed,
                                    device=device, progress=s["progress"], time_budget_s=budget)  # fmt: skip
        logger.log_metrics({"pretrain_digit_accuracy": pretrained.digit_accuracy,
                            "pretrain_false_alarms": pretrained.false_alarms}, step=0)  # fmt: skip
        tqdm.write(f"pretrained trunk: {pretrained}", file=sys.stderr)  # always: the logs of background runs
    started_trained = pretrained is not None or s["init_from"] or s["init_regions_from"]
    frozen = _freeze(model, s["freeze_stages"]) if started_trained else None
    cache_grids = s["cache_grids"] and frozen is not None and s["freeze_stages"] >= len(s["stage_widths"])
    assert cache_grids or not s["cache_grids"], "cache_grids needs every stage fixed (freeze_stages) after pretraining or init_from"
    clips = ActionClips("train", s["train_clips"], vocab, seed=options.seed, size=model.frame_size, pool=s["clip_pool"],
                        mode=s["mode"], keep=not cache_grids, augment=s["augment_handwriting"])  # fmt: skip
    train_set = GridClips(clips, model) if cache_grids else clips
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
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=options.learning_rate, weight_decay=s["weight_decay"])
    clip_started = time.monotonic()
    clip_budget = None if budget is None else max(budget - (clip_started - started), 1.0)

    def progress_of(step: int) -> float:
        # With a time budget the schedule follows whichever runs out first, steps or time,
        # so a run on a slower (shared) machine still anneals before it is stopped.
        done = step / max(total_steps, 1)
        if clip_budget is not None:
            done = max(done, (time.monotonic() - clip_started) / clip_budget)
        return done

    warmup = s["warmup_steps"] / max(total_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(progress_of(step), warmup, s["min_lr_ratio"])
    )
    eval_every = s["eval_every"] or len(loader)
    training = {k: v for k, v in params.items() if k not in ("task", "parameters")}
    if pretrained is not None:
        training.update(pretrain_steps_done=pretrained.steps, pretrain_seconds=round(pretrained.seconds, 1),
                        pretrain_val_digit_accuracy=round(pretrained.digit_accuracy, 4))  # fmt: skip
    history: list[dict[str, float]] = []
    best, step, epoch, stop = -1.0, 0, 0, False
    running, seen = 0.0, 0
    while not stop:
        epoch += 1
        train_set.set_epoch(epoch - 1)
        _train_mode(model, frozen)
        bar = tqdm(loader, desc=f"epoch {epoch}/{options.epochs}", disable=not s["progress"], leave=False)
        for clips, captions, spans in bar:
            clips, captions = clips.to(device), captions.to(device)  # [B, T, 3, H, W] + lengths, [B, L+1]
            if cache_grids:  # "frames" are the cached trunk grids [B, T, C, h, w]
                logits, attention, presence = model.forward_train_grids(clips.frames, clips.lengths, captions[:, :-1])
            else:
                logits, attention, presence = model.forward_train(clips, captions[:, :-1])  # token t+1 from tokens <= t
            # label mode: the class token (position 0) attends to the action's frames
            # supervised over frames: where in a frame (which region) is the model's to find
            loss, ce = action_loss(logits, captions[:, 1:], model.frames_of(attention), vocab.pad_id, spans, s["attention_supervision"],
                                   words_per_action=2 if label_mode else 4)  # fmt: skip
            if presence is not None and s["presence_weight"] > 0:
                targets = model.presence_targets(captions)
                loss = loss + s["presence_weight"] * F.binary_cross_entropy_with_logits(presence, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, s["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            running, seen = running + ce.item() * len(clips), seen + len(clips)
            bar.set_postfix(loss=f"{running / seen:.3f}", total=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
            out_of_time = budget is not None and time.monotonic() - started > budget
            stop = step >= total_steps or out_of_time or (epoch >= options.epochs and step % len(loader) == 0)
            if step % eval_every and not stop:
                continue
            val, _, _ = evaluate_model(model, s["val_clips"], progress=False, split="val", seed=options.seed)
            _train_mode(model, frozen)
            wall = time.monotonic() - started
            row = {"epoch": epoch, "step": step, "train_loss": running / max(seen, 1), "wall_seconds": wall,
                   **{f"val_{k}": v for k, v in val.items() if k not in ("clips", "actions")}}  # fmt: skip
            running, seen = 0.0, 0
            history.append(row)
            logger.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
            score = _selection_score(val)
            keys = ("train_loss", "val_exact_sequence_accuracy", "val_per_action_accuracy", "val_label_accuracy",
                    "val_localisation_iou50")  # fmt: skip
            line = ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
            mark = " (best)" if score > best else ""
            tqdm.write(f"step {step} epoch {epoch}: {line}, {wall:.0f}s{mark}", file=sys.stderr)  # always, as above
            # Only the best-on-validation model is written, as soon as it is found, so a run
            # cut short still leaves its best model behind.
            if score > best:
                best = score
                save_recognizer(model, options.output_dir, {**training, "steps": step, "epochs_done": epoch,
                                                            "wall_seconds": round(wall, 1),
                                                            "val_selection_score": round(score, 4)}, s["fp16"])  # fmt: skip
            if stop:
                break
    chosen = max(history, key=lambda r: _selection_score({k.removeprefix("val_"): v for k, v in r.items()}))
    metrics = {k: float(v) for k, v in chosen.items() if k != "epoch"}
    metrics["train_wall_seconds"] = time.monotonic() - started
    metrics["steps_done"] = float(step)
    return TrainResult(artifact_dir=options.output_dir, metrics=metrics, params=params)
