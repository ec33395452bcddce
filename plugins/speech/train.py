"""Training recipe for the bundled speech model (Listen, Attend and Spell on espeak-ng speech).

First CTC on the listener's 4x layer alone (cheap steps: no speller), then label-smoothed
cross-entropy plus CTC plus guided attention; optional SpecAugment (frequency and time masks),
vocal tract length perturbation and dropout; Adam with warm-up and cosine decay; gradient
clipping. Batches hold utterances of similar length (less padding); the speller's first epoch
goes from short to long. Every `eval_every` steps and at each epoch's end the validation
loss, CER and WER (greedy) are logged, and the weights with the best validation CER so far
are written to the output directory at once. `init_from` continues from an artifact
directory, grown first if these settings ask for more listener blocks or a wider speller
(grow.py).

Knobs live in `DEFAULTS`, overridden with `mmserve train speech --set key=value`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmserve.plugins.artifacts import CHECKPOINTS_DIR, CONFIG_FILE, WEIGHTS_FILE
from mmserve.plugins.nn.decoder import DecoderConfig
from mmserve.plugins.speech.checkpoint import load_speech_model, save_speech_model
from mmserve.plugins.speech.clip_stream import ExtraClipStream
from mmserve.plugins.speech.data import (
    SPLIT_SIZES,
    SpeechClips,
    build_cache,
    build_extra_train,
    build_new_speaker_val,
    default_cache_dir,
    split_dir,
)
from mmserve.plugins.speech.evaluate import clip_features, ctc_transcribe, error_rates, silence_padded, transcribe
from mmserve.plugins.speech.feature_cache import split_features
from mmserve.plugins.speech.features import FeatureConfig, LogMel, normalize_utterance
from mmserve.plugins.speech.grow import grow_from
from mmserve.plugins.speech.model import (
    ListenAttendSpell,
    ListenerConfig,
    SpeechBatch,
    SpeechConfig,
    ctc_loss,
    speech_loss,
)
from mmserve.plugins.speech.text import char_vocabulary, encode_chars
from mmserve.plugins.task import TrainOptions, TrainResult
from mmserve.plugins.tracking import RunLogger
from mmserve.plugins.training import resolve_settings as resolve_task_settings

DEFAULTS: dict[str, Any] = {
    # data (generated once into the cache directory; "" = $MMSERVE_DATA_DIR/speech-data)
    "data_dir": "",
    "train_clips": SPLIT_SIZES["train"],
    "val_clips": SPLIT_SIZES["val"],
    "test_clips": SPLIT_SIZES["test"],
    "extra_train_clips": 0,  # more training clips (training voices, fresh draws and sentences); val and test unchanged
    # 0: write every extra clip before training; N: write them in N background processes while
    # training, each shard joining the training pool as it lands (clip_stream.py)
    "extra_clip_processes": 0,
    # clips of random speakers (random_voices.py: a training accent, one of 200 speakers espeak-ng
    # never shipped, fresh sentences), written before training like the extra clips
    "new_speaker_clips": 0,
    # ... of 200 other random speakers that also vary in voice source (Klatt, breath, tone, voicing)
    "varied_speaker_clips": 0,
    # ... of 200 other varied speakers with a random accent each (sound shifts and stress timing)
    "accent_clips": 0,
    # validate on the val clips and on the same sentences read by new random speakers
    # ("val-voices"), so that the best weights are the best for both
    "val_new_speakers": False,
    # ... and on the val clips again with half a second of their background before and after
    # (`evaluate.silence_padded`, what `speech.tune --padded` scores), so that the best weights
    # are also the best for recordings that do not start with the speech
    "val_padded": False,
    "data_workers": 4,  # espeak-ng subprocesses at once while generating
    # an artifact directory to start from, e.g. to continue a run: the same model settings, or
    # more listener blocks than it has (new blocks start as the identity: the model grows deeper)
    "init_from": "",
    # features and model
    "n_mels": 40,
    "stats_margin_s": -1.0,  # normalise features on the speech +- this many seconds (features.py); < 0: on the whole clip
    "conv_channels": 8,
    "conv_dim": 96,
    "listener_hidden": 64,
    "listener_blocks_4x": 0,  # residual BiLSTM blocks after the listener's 4x BiLSTM (model.py)
    "listener_blocks_8x": 0,  # ... and after its 8x BiLSTM
    "listener_block_hidden": 128,  # their width per direction
    "embed_dim": 32,
    "speller_hidden": 128,
    "attn_dim": 64,
    "dropout": 0.1,
    "ctc": True,
    # training
    "ctc_weight": 0.5,
    "guide_weight": 1.0,  # guided attention (near-diagonal alignment); 0 = off
    "guide_width": 0.2,  # its tolerance, as a fraction of the utterance
    "ctc_pretrain_steps": 1000,  # first train the listener alone with CTC (cheap steps) for this many steps
    "ctc_pretrain_fraction": 0.35,  # ... or this fraction of the time budget, whichever ends first
    "curriculum_epochs": 1,  # epochs whose batches go from the shortest utterances to the longest
    "eval_every": 200,  # validate (and save the best weights so far) every this many steps; 0 = each epoch only
    # keep each new best's weights in <output>/checkpoints/step-<n> too, the last this many, to
    # average them afterwards (python -m mmserve.plugins.average); 0 = none. Registering the output
    # directory leaves them out.
    "keep_best": 0,
    "label_smoothing": 0.1,
    "freq_masks": 2,
    "freq_mask_width": 12,
    "time_masks": 2,
    "time_mask_ratio": 0.05,  # each time mask is at most this fraction of the utterance
    # vocal tract length perturbation: the mel axis warped by a factor drawn from 1 +- this
    # (0.1 = 0.9-1.1), so formants move as between speakers; 0 = off
    "freq_warp": 0.0,
    # silence before and after the speech: up to this many seconds each side (drawn uniformly),
    # on `edge_pad_prob` of the clips; the model then copes with recordings that do not start
    # and end at the speech, as synthetic clips do; 0 = off
    "edge_pad_seconds": 0.0,
    "edge_pad_prob": 0.5,
    # recordings of two sentences: on `join_prob` of the batches, consecutive clips are joined in
    # pairs (the same frames, half the rows), with up to `join_gap_seconds` more of the first's
    # background between them; the speller otherwise learns that a recording holds one sentence
    # and ends its transcript where the first one ends; 0 = off
    "join_prob": 0.0,
    "join_gap_seconds": 0.3,
    "weight_decay": 1e-6,
    "grad_clip": 5.0,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,
    "max_length": 200,  # characters, for validation decoding
    "silence_percent": 2,  # extra clips of silence / faint noise with an empty transcript
    # run
    "time_budget_minutes": 0.0,  # stop once training has run this long; the cosine decay follows it (0 = no limit)
    "num_threads": 1,  # torch CPU threads: the machine is shared
    "fp16": False,
    "progress": True,
}


def keep_checkpoint(output_dir: Path, step: int, keep: int) -> Path:
    """Copy the artifact just saved in `output_dir` to checkpoints/step-<step>, and drop all but the
    newest `keep` copies."""
    folder = output_dir / CHECKPOINTS_DIR / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(output_dir / name, folder / name)
    kept = sorted((output_dir / CHECKPOINTS_DIR).glob("step-*"), key=lambda path: int(path.name.removeprefix("step-")))
    for old in kept[:-keep]:
        shutil.rmtree(old)
    return folder


def resolve_settings(extra: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by `extra` (see mmserve.plugins.training)."""
    return resolve_task_settings("speech", DEFAULTS, extra)


def build_model(s: dict[str, Any]) -> ListenAttendSpell:
    vocab = char_vocabulary()
    listener = ListenerConfig(
        s["conv_channels"], s["conv_dim"], s["listener_hidden"], s["dropout"], s["ctc"],
        s["listener_blocks_4x"], s["listener_blocks_8x"], s["listener_block_hidden"],
    )  # fmt: skip
    decoder = DecoderConfig(
        vocab_size=len(vocab), memory_dim=listener.memory_dim, embed_dim=s["embed_dim"],
        hidden_dim=s["speller_hidden"], attn_dim=s["attn_dim"], cell="lstm", num_layers=1,
        dropout=s["dropout"], attention="location",
    )  # fmt: skip
    features = FeatureConfig(n_mels=s["n_mels"], stats_margin_s=s["stats_margin_s"] if s["stats_margin_s"] >= 0 else None)
    return ListenAttendSpell(SpeechConfig(features, listener, decoder), vocab)


def spec_augment(features: torch.Tensor, rng: random.Random, s: dict[str, Any]) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: zero (= the utterance mean) a few
    bands of mel channels and a few spans of frames. features [T, F] -> [T, F]."""
    out = features.clone()
    frames, bands = out.shape
    for _ in range(s["freq_masks"]):
        width = rng.randint(0, s["freq_mask_width"])
        start = rng.randint(0, max(bands - width, 0))
        out[:, start : start + width] = 0.0
    span = int(frames * s["time_mask_ratio"])
    for _ in range(s["time_masks"]):
        width = rng.randint(0, span)
        start = rng.randint(0, max(frames - width, 0))
        out[start : start + width] = 0.0
    return out


def warp_frequencies(features: torch.Tensor, factor: float, fixed_top: float = 0.8) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton 2013) on log-mel features: band b takes
    the value at band b * factor up to a cut-off, then a straight line that keeps the top band
    in place (so nothing falls off the axis), linearly interpolated between bands, and the
    result normalised again per utterance like the served features. features [T, F] -> [T, F]."""
    bands = features.shape[1]
    top = bands - 1
    cut = fixed_top * top / max(factor, 1.0)
    position = torch.arange(bands, dtype=torch.float32)
    source = torch.where(position <= cut, position * factor, cut * factor + (position - cut) * (top - cut * factor) / (top - cut))
    source = source.clamp(0, top)
    low = source.floor().long()
    high = (low + 1).clamp_max(top)
    frac = (source - low).to(features.dtype)
    warped = features[:, low] * (1 - frac) + features[:, high] * frac
    return normalize_utterance(warped)


def background_frames(features: torch.Tensor, count: int, rng: random.Random, quiet_frames: int = 10) -> torch.Tensor:
    """`count` frames of a clip's own background: its last `quiet_frames` frames (every synthetic
    clip ends in ~0.15-0.45 s of noise after espeak-ng's final pause), drawn in random order.
    features [T, F] -> [count, F]."""
    quiet = features[-min(quiet_frames, features.shape[0]) :]
    draw = [rng.randrange(quiet.shape[0]) for _ in range(count)]
    return quiet[torch.tensor(draw, dtype=torch.long)]


def pad_edges(features: torch.Tensor, lead: int, trail: int, rng: random.Random, renormalise: bool = True) -> torch.Tensor:
    """`lead` and `trail` frames of the clip's own background (background_frames) put before and
    after it, then normalised again per utterance. Per-band normalisation is affine, so
    normalising the normalised frames again gives what normalising the raw padded recording
    would. Features normalised on the speech alone (`stats_margin_s`) keep their statistics
    whatever background is added around it: `renormalise=False` then pads and nothing else.
    features [T, F] -> [lead + T + trail, F]."""
    padding = background_frames(features, lead + trail, rng)
    padded = torch.cat([padding[:lead], features, padding[lead:]])
    return normalize_utterance(padded) if renormalise else padded


def augment(features: torch.Tensor, rng: random.Random, s: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """One training clip's features as the step sees them: with background added around it
    (`edge_pad_seconds`), warped (`freq_warp`), then masked (SpecAugment); and the frame its
    speech now starts at."""
    lead = 0
    if s["edge_pad_seconds"] > 0 and rng.random() < s["edge_pad_prob"]:
        most = int(s["edge_pad_seconds"] * 100)  # 10 ms frames
        lead, trail = rng.randint(0, most), rng.randint(0, most)
        features = pad_edges(features.float(), lead, trail, rng, renormalise=s["stats_margin_s"] < 0)
    if s["freq_warp"] > 0:
        features = warp_frequencies(features.float(), rng.uniform(1 - s["freq_warp"], 1 + s["freq_warp"]))
    return spec_augment(features, rng, s), lead


def join_pairs(examples: list[tuple[torch.Tensor, list[int]]], rng: random.Random, space_id: int,
               most_gap: int) -> list[tuple[torch.Tensor, list[int]]]:  # fmt: skip
    """Clips (features [T, F], <bos> chars <eos>) joined in consecutive pairs as one recording of
    two sentences: the first, 0 to `most_gap` frames of its own background (background_frames),
    then the second; their transcripts joined by a space (a silent clip adds nothing). An odd
    last clip stays alone."""
    joined = []
    for a in range(0, len(examples) - 1, 2):
        (first, first_ids), (second, second_ids) = examples[a], examples[a + 1]
        gap = background_frames(first, rng.randint(0, most_gap), rng)
        one, two = first_ids[1:-1], second_ids[1:-1]
        chars = one + ([space_id] if one and two else []) + two
        joined.append((torch.cat([first, gap, second]), [first_ids[0], *chars, first_ids[-1]]))
    return joined + examples[len(examples) - len(examples) % 2 :]


def silence_clip(rng: random.Random, sample_rate: int = 16000) -> torch.Tensor:
    """0.3-4 s of digital silence or faint noise (-90 to -45 dBFS)."""
    samples = int(rng.uniform(0.3, 4.0) * sample_rate)
    if rng.random() < 0.2:
        return torch.zeros(samples)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.randn(samples, generator=gen) * 10 ** (rng.uniform(-90, -45) / 20)


def pad_targets(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(t) for t in sequences)
    return torch.tensor([t + [pad_id] * (width - len(t)) for t in sequences], dtype=torch.long)


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, shortest_first: bool = False) -> list[list[int]]:
    """Batches of utterances of similar length (sorted with a little noise), in random order,
    or from the shortest to the longest (a curriculum: short clips align more easily)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] + rng.uniform(-15, 15))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if not shortest_first:
        rng.shuffle(batches)
    return batches


def _lr_factor(step: int, total: int, warmup: int, floor: float, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to `floor` over the steps, or over the time budget
    when that runs out first (so a budget-limited run still ends at a low learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(max((step - warmup) / max(total - warmup, 1), time_progress), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _over_budget(started: float, s: dict[str, Any]) -> bool:
    return s["time_budget_minutes"] > 0 and time.monotonic() - started > 60 * s["time_budget_minutes"]


def validation_set(val_sets: list[SpeechClips], featurizer: LogMel, padded: bool = False,
                   device: torch.device | str = "cpu", progress: bool = False) -> tuple[list[torch.Tensor], list[str]]:  # fmt: skip
    """Features [T, F] and transcripts of what training validates on: every clip of each set,
    then, when `padded`, the first set's (the val clips) again with their background around them."""
    features = [x for clips in val_sets for x in clip_features(clips, featurizer, progress, f"features {clips.directory.name}", device)]
    texts = [clips.text(i) for clips in val_sets for i in range(len(clips))]
    if padded:
        val = val_sets[0]
        features += [featurizer(torch.from_numpy(wave).to(device)).cpu() for wave in silence_padded([w for w, _ in val])]
        texts += [val.text(i) for i in range(len(val))]
    return features, texts


@torch.no_grad()
def validate_ctc(model: ListenAttendSpell, features: list[torch.Tensor], texts: list[str]) -> dict[str, float]:
    """Validation of the listener alone (CTC best path), while it is pretrained."""
    rates = error_rates(texts, ctc_transcribe(model, features))
    return {"val_ctc_wer": rates["wer"], "val_ctc_cer": rates["cer"]}


@torch.no_grad()
def validate(model: ListenAttendSpell, features: list[torch.Tensor], texts: list[str], s: dict[str, Any]) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(features), 32):
        batch = model.collate(features[start : start + 32])
        batch = SpeechBatch(batch.features.to(device), batch.lengths.to(device))
        targets = pad_targets([encode_chars(model.vocab, t) for t in texts[start : start + 32]], model.pad_id).to(device)
        _, parts = speech_loss(model, batch, targets, 0.0, 0.0)
        total, count = total + parts["ce"] * len(targets), count + len(targets)
    hypotheses = transcribe(model, features, beam_size=1, max_length=s["max_length"])
    rates = error_rates(texts, hypotheses)
    return {"val_loss": total / count, "val_wer": rates["wer"], "val_cer": rates["cer"]}


def train_speech(options: TrainOptions, logger: RunLogger) -> TrainResult:
    s = resolve_settings(options.extra)
    assert options.epochs >= 1 and options.batch_size >= 1, "epochs and batch_size must be >= 1"
    if s["num_threads"]:
        torch.set_num_threads(s["num_threads"])
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    device = torch.device(options.device)
    if device.type == "cuda":  # TF32 matrix products: nothing at this model's size needs more
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sizes = {"train": s["train_clips"], "val": s["val_clips"], "test": s["test_clips"]}
    cache = build_cache(s["data_dir"] or default_cache_dir(), sizes, s["data_workers"], s["progress"])
    streaming = bool(s["extra_train_clips"] and s["extra_clip_processes"])  # see ExtraClipStream below
    model = build_model(s)
    if s["init_from"]:
        grow_from(model, load_speech_model(s["init_from"]))
    model = model.to(device)
    featurizer = LogMel(model.config.features).to(device)
    train_x: list[torch.Tensor] = []
    train_y: list[list[int]] = []
    spoken_and_silent = [0, 0]

    def add_clips(folder) -> None:
        clips = SpeechClips(folder)
        train_x.extend(split_features(clips, featurizer, s["progress"], f"features {clips.directory.name}"))
        train_y.extend(encode_chars(model.vocab, clips.text(i)) for i in range(len(clips)))
        # Silence and faint noise transcribe to nothing: a few such clips teach the empty answer.
        spoken_and_silent[0] += len(clips)
        for i in range(spoken_and_silent[1], spoken_and_silent[0] * s["silence_percent"] // 100):
            train_x.append(featurizer(silence_clip(random.Random(f"silence/{i}")).to(device)).cpu())
            train_y.append(encode_chars(model.vocab, ""))
            spoken_and_silent[1] = i + 1

    add_clips(split_dir(cache, "train", sizes))
    val_sets = [SpeechClips(split_dir(cache, "val", sizes))]
    if s["val_new_speakers"]:
        val_sets.append(SpeechClips(build_new_speaker_val(cache, sizes, s["data_workers"], s["progress"])))
    val_x, val_texts = validation_set(val_sets, featurizer, s["val_padded"], device, s["progress"])
    if s["extra_train_clips"] and not streaming:
        for folder in build_extra_train(cache, sizes, s["extra_train_clips"], s["data_workers"], s["progress"]):
            add_clips(folder)
    for setting, split in (("new_speaker_clips", "train-voices"), ("varied_speaker_clips", "train-voices-varied"),
                           ("accent_clips", "train-accents")):
        if s[setting]:
            for folder in build_extra_train(cache, sizes, s[setting], s["data_workers"], s["progress"], split=split):
                add_clips(folder)
    final_size = len(train_x) + (s["extra_train_clips"] * (100 + s["silence_percent"]) // 100 if streaming else 0)
    steps_per_epoch = math.ceil(final_size / options.batch_size)  # once every shard has landed
    total_steps = options.epochs * steps_per_epoch
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    params = {"task": "speech", "epochs": options.epochs, "batch_size": options.batch_size,
              "learning_rate": options.learning_rate, "seed": options.seed, "max_steps": options.max_steps,
              "total_steps": total_steps, "parameters": sum(p.numel() for p in model.parameters()),
              "val_utterances": len(val_x), **s}  # fmt: skip
    logger.log_params(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, weight_decay=s["weight_decay"])
    schedule = partial(_lr_factor, total=total_steps, warmup=s["warmup_steps"], floor=s["min_lr_ratio"])
    budget_s = 60 * s["time_budget_minutes"]
    history: list[dict[str, float]] = []
    best_cer: float | None = None
    training = {k: v for k, v in params.items() if k not in ("task", "parameters")}
    step, started = 0, time.monotonic()
    pretrain_end: int | None = None  # the step the CTC pretraining ended at

    def pretraining() -> bool:
        # Listener-only CTC steps first: they cost a fraction of a full step, and a listener
        # that already tells sounds apart lets the speller's attention find the alignment.
        nonlocal pretrain_end
        if pretrain_end is not None or not s["ctc"]:
            return False
        fraction = (time.monotonic() - started) / budget_s if budget_s > 0 else 0.0
        if step < s["ctc_pretrain_steps"] and fraction < s["ctc_pretrain_fraction"]:
            return True
        pretrain_end = step
        return False

    def checkpoint(epoch: int, running: float, seen: int, final: bool = False) -> None:
        # Validate; the best weights so far go to the output directory at once, so a run that
        # is stopped early still leaves usable weights.
        nonlocal best_cer
        row: dict[str, float] = {"epoch": epoch, "step": step, "train_loss": running / max(seen, 1), "train_pool": len(train_x)}
        if pretraining() and not (final and not history):  # the speller is untrained: only the listener's CTC
            row.update(validate_ctc(model, val_x, val_texts))
        else:
            row.update(validate(model, val_x, val_texts, s))
            history.append(row)
        logger.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
        # Best by CER: while the speller still babbles, WER sits at or above 100 % whatever the
        # progress (a garbled word counts as wrong), and selecting on it kept an early model.
        if "val_cer" in row and (best_cer is None or row["val_cer"] <= best_cer):
            best_cer = row["val_cer"]
            wall = round(time.monotonic() - started, 1)
            save_speech_model(model, options.output_dir, {**training, "steps": step, "wall_seconds": wall}, s["fp16"])
            if s["keep_best"] > 0:
                keep_checkpoint(options.output_dir, step, s["keep_best"])
        # Always printed (logs of background runs), beside the progress bar when there is one.
        line = ", ".join(f"{k} {v:.4g}" for k, v in row.items()) + f", {time.monotonic() - started:.0f}s"
        tqdm.write(line, file=sys.stderr)
        model.train()

    # Created at the with, so the shard writers stop however training ends.
    stream = (ExtraClipStream(cache, sizes, s["extra_train_clips"], s["extra_clip_processes"], features=model.config.features)
              if streaming else None)  # fmt: skip
    with stream or contextlib.nullcontext():
        speller_epochs = 0  # epochs that began with the speller in training
        for epoch in range(1, options.epochs + 1):
            model.train()
            running, seen = 0.0, 0
            for folder in stream.take_ready() if stream else []:  # shards written since the last epoch
                add_clips(folder)
            lengths = [x.shape[0] for x in train_x]
            speller_epochs += 0 if pretraining() else 1
            curriculum = 1 <= speller_epochs <= s["curriculum_epochs"]  # the speller meets short clips first
            batches = length_batches(lengths, options.batch_size, rng, shortest_first=curriculum)
            bar = tqdm(batches, desc=f"epoch {epoch}/{options.epochs}", disable=not s["progress"], leave=False)
            for index in bar:
                examples = [(train_x[i], train_y[i]) for i in index]
                if s["join_prob"] > 0 and len(examples) > 1 and rng.random() < s["join_prob"]:
                    examples = join_pairs(examples, rng, model.vocab.stoi[" "], int(s["join_gap_seconds"] * 100))
                clips, leads = zip(*(augment(x, rng, s) for x, _ in examples))
                batch = model.collate(list(clips))
                batch = SpeechBatch(batch.features.to(device), batch.lengths.to(device))
                # where the speech is, for the guided attention, when silence was added around it
                speech = None
                if s["edge_pad_seconds"] > 0:
                    speech = (torch.tensor(leads), torch.tensor([x.shape[0] for x, _ in examples]))
                targets = pad_targets([y for _, y in examples], model.pad_id).to(device)
                if pretraining():
                    loss = ctc_loss(model, batch, targets)
                    parts = {"ce": float("nan"), "ctc": loss.item()}
                else:
                    loss, parts = speech_loss(model, batch, targets, s["label_smoothing"], s["ctc_weight"] if s["ctc"] else 0.0,
                                              s["guide_weight"], s["guide_width"], speech)  # fmt: skip
                time_progress = (time.monotonic() - started) / budget_s if budget_s > 0 else 0.0
                lr = options.learning_rate * schedule(step, time_progress=time_progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
                optimizer.step()
                step += 1
                running, seen = running + loss.item() * len(index), seen + len(index)
                bar.set_postfix(loss=f"{running / seen:.3f}", ce=f"{parts['ce']:.3f}", lr=f"{lr:.1e}")
                if step >= total_steps or _over_budget(started, s):
                    break
                if s["eval_every"] and step % s["eval_every"] == 0:
                    checkpoint(epoch, running, seen)
            last = step >= total_steps or _over_budget(started, s)
            checkpoint(epoch, running, seen, final=last)
            if last:
                break
    wall = time.monotonic() - started
    assert history, "no epoch ran"
    logger.log_text(json.dumps(history, indent=1), "history.json")
    best_row = min(reversed(history), key=lambda r: r["val_cer"])  # the last of equals: the weights saved
    metrics = {k: float(v) for k, v in best_row.items() if k not in ("epoch", "step")}
    metrics.update({"best_epoch": float(best_row["epoch"]), "best_step": float(best_row["step"]), "train_wall_seconds": wall,
                    "ctc_pretrain_steps_done": float(pretrain_end if pretrain_end is not None else step)})  # fmt: skip
    return TrainResult(artifact_dir=options.output_dir, metrics=metrics, params=params)
