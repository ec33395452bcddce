"""Scoring speech models: WER and CER (jiwer) on the held-out-voice test split, greedy and
beam search, beside pocketsphinx (CMU's HMM recogniser with its bundled English models) on the
very same clips."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmserve.plugins.nn.search import DecodeParams, decode
from mmserve.plugins.speech.checkpoint import load_speech_model
from mmserve.plugins.speech.data import (
    SPLIT_SIZES,
    SpeechClips,
    build_cache,
    build_new_speaker_val,
    default_cache_dir,
    recording_condition,
    split_dir,
    voice_novelty,
)
from mmserve.plugins.speech.features import LogMel
from mmserve.plugins.speech.model import ListenAttendSpell, SpeechBatch
from mmserve.plugins.speech.segment import speech_parts
from mmserve.plugins.speech.task import SpeechTask
from mmserve.plugins.speech.text import decode_chars, normalize_text
from mmserve.plugins.tracking import RunLogger

# Chosen on the val clips (stage-6 model, w = 0.3, beta = 0.1): beam WER 49.3 % with 4,
# 47.1 % with 8, 46.4 % with 16 at twice the cost again.
BEAM_SIZE = 8
LENGTH_PENALTY = 0.6  # GNMT alpha: without it beam search favours short transcripts
MAX_LENGTH = 200
SILENCE_PAD_S = 0.5  # background added before and after each clip for the robustness figure
LONG_FORM_CLIPS = 4  # test clips per recording for the long-upload figure (~12 s)
POCKETSPHINX_CLIPS = 40  # default; pocketsphinx takes seconds a clip on a shared CPU


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER (jiwer) of normalised transcripts."""
    import jiwer

    assert len(references) == len(hypotheses), f"{len(references)} references vs {len(hypotheses)} hypotheses"
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    assert all(refs), "every reference must have text"
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def error_rates_by_group(references: Sequence[str], hypotheses: Sequence[str],
                         groups: Sequence[str]) -> dict[str, dict[str, float]]:  # fmt: skip
    """WER / CER (and the clip count) of each group of clips: `groups[i]` names clip i's."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    return {group: {**error_rates([references[i] for i in index], [hypotheses[i] for i in index]), "clips": float(len(index))}
            for group, index in sorted(members.items())}  # fmt: skip


def background(wave: np.ndarray, seconds: float, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """`seconds` of the clip's background: noise with the spectrum and level of its quietest
    tenth of 20 ms frames (its noise floor; every test clip carries noise). Shaped rather than
    white, because a floor is rarely white: white noise around a telephone-band clip would put
    energy above 3.4 kHz that no telephone line carries, and the padded clips would measure
    that oddity instead of a recording that starts before its speaker."""
    frame = sample_rate // 50
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame).astype(np.float64)
    length = int(seconds * sample_rate)
    if not len(frames) or length == 0:
        return np.zeros(length, dtype=np.float32)
    energy = np.square(frames).mean(axis=1)
    quiet = frames[energy <= np.percentile(energy, 10)]
    level = float(np.sqrt(np.square(quiet).mean()))
    floor_spectrum = np.sqrt(np.mean(np.abs(np.fft.rfft(quiet * np.hanning(frame), axis=1)) ** 2, axis=0))
    white = np.fft.rfft(rng.standard_normal(length))
    gain = np.interp(np.linspace(0.0, 1.0, len(white)), np.linspace(0.0, 1.0, len(floor_spectrum)), floor_spectrum)
    shaped = np.fft.irfft(white * gain, length)
    rms = float(np.sqrt(np.square(shaped).mean()))
    return (shaped * (level / rms if rms > 0 else 0.0)).astype(np.float32)


def pad_with_background(wave: np.ndarray, seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """The clip with `seconds` of its own background before and after it, as a recording that
    starts before the speaker does."""
    rng = np.random.default_rng(seed)
    return np.concatenate([background(wave, seconds, rng, sample_rate), wave, background(wave, seconds, rng, sample_rate)])


def silence_padded(waves: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip with SILENCE_PAD_S of its own background before and after (seeded by its index):
    the padded clips that `mmserve eval speech` and `speech.tune --padded` both score."""
    return [pad_with_background(wave, SILENCE_PAD_S, seed=i) for i, wave in enumerate(waves)]


def long_recordings(clips: SpeechClips, per_recording: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Consecutive test clips joined into recordings of `per_recording` sentences (about
    12 s for 4), with 0.1-0.6 s of background between them, and their joined transcripts."""
    rng = np.random.default_rng(seed)
    out = []
    for first in range(0, len(clips) - per_recording + 1, per_recording):
        waves = [clips.wave(i) for i in range(first, first + per_recording)]
        pieces = [piece for w in waves for piece in (w, background(w, rng.uniform(0.1, 0.6), rng))][:-1]
        out.append((np.concatenate(pieces), " ".join(clips.text(i) for i in range(first, first + per_recording))))
    return out


class ServedParts:
    """Waveforms as the server takes them apart (segment.py's speech_parts with the speech
    task's settings): the features of every part and the waveform each came from, so that
    a decoder's transcripts of the parts join back into one per waveform."""

    def __init__(self, model: ListenAttendSpell, waves: Sequence[np.ndarray], progress: bool = False, desc: str = "features",
                 keep_silence_s: float | None = None, segment_max_s: float | None = None):  # fmt: skip
        featurizer = LogMel(model.config.features)
        rate, task = model.config.features.sample_rate, SpeechTask
        keep = task.keep_silence_s if keep_silence_s is None else keep_silence_s
        max_s, min_s = task.segment_lengths(segment_max_s)
        self.features: list[torch.Tensor] = []
        self.owners: list[int] = []
        self.count = len(waves)
        for index, wave in enumerate(tqdm(waves, desc=desc, disable=not progress, leave=False)):
            for start, end in speech_parts(wave, rate, max_s, min_s, keep):
                self.features.append(featurizer(torch.from_numpy(np.ascontiguousarray(wave[start:end]))))
                self.owners.append(index)

    def join(self, texts: Sequence[str]) -> list[str]:
        """One transcript per waveform from its parts' (in order), joined as the server joins them."""
        joined: list[list[str]] = [[] for _ in range(self.count)]
        for text, owner in zip(texts, self.owners):
            if text:
                joined[owner].append(text)
        return [SpeechTask.segment_separator.join(words) for words in joined]


def clip_features(clips: SpeechClips, featurizer: LogMel, progress: bool = False, desc: str = "features",
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:  # fmt: skip
    """Log-mel features [T, F] of every clip of a split, computed on `device` (where
    `featurizer` is) and returned on the CPU."""
    bar = tqdm(range(len(clips)), desc=desc, disable=not progress, leave=False)
    return [featurizer(torch.from_numpy(clips.wave(i)).to(device)).cpu() for i in bar]


@torch.no_grad()
def transcribe(
    model: ListenAttendSpell,
    features: Sequence[torch.Tensor],
    beam_size: int = 1,
    max_length: int = MAX_LENGTH,
    alpha: float = LENGTH_PENALTY,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "decoding",
) -> list[str]:
    """Transcripts of feature tensors [T, F], decoded in batches by the engine's search."""
    model.eval()
    device = next(model.parameters()).device
    params = DecodeParams(max_length=max_length, beam_size=beam_size, length_penalty=alpha, keep_attention=False)
    out: list[str] = []
    for start in tqdm(range(0, len(features), batch_size), desc=desc, disable=not progress, leave=False):
        batch = model.collate(list(features[start : start + batch_size]))
        memory = model.encode(SpeechBatch(batch.features.to(device), batch.lengths.to(device)))
        out.extend(decode_chars(model.vocab, r.tokens) for r in decode(model, memory, params))
    return out


@torch.no_grad()
def ctc_transcribe(model: ListenAttendSpell, features: Sequence[torch.Tensor], batch_size: int = 32) -> list[str]:
    """Greedy CTC transcripts from the listener's CTC head (best path: argmax per frame, merge
    repeats, drop blanks). A diagnostic of the listener alone; the served decoder is the speller."""
    assert model.ctc is not None, "this model has no CTC head"
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(features), batch_size):
        batch = model.collate(list(features[start : start + batch_size]))
        _, _, x4, len4 = model.listen(SpeechBatch(batch.features.to(device), batch.lengths.to(device)))
        best = model.ctc(x4).argmax(dim=-1).cpu()  # [B, T4]
        for row, n in zip(best.tolist(), len4.tolist()):
            ids, last = [], None
            for token in row[:n]:
                if token != last and token != model.pad_id:
                    ids.append(token)
                last = token
            out.append(decode_chars(model.vocab, ids))
    return out


def pocketsphinx_transcribe(waves: Sequence[np.ndarray], progress: bool = False) -> list[str]:
    """pocketsphinx's default US English acoustic model, dictionary and language model."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL")
    out = []
    for wave in tqdm(waves, desc="pocketsphinx", disable=not progress, leave=False):
        decoder.start_utt()
        decoder.process_raw((np.clip(wave, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        out.append(normalize_text(hyp.hypstr) if hyp is not None else "")
    return out


def pocketsphinx_cached(clips: SpeechClips, cache_file: Path, limit: int, progress: bool = False, save_every: int = 10) -> list[str]:
    """pocketsphinx's answers for the first `limit` clips. The test clips are fixed and
    pocketsphinx is slow (seconds a clip), so answers are kept in `cache_file` beside the clips
    and only the missing ones are computed, saved every `save_every` clips (an interrupted run
    keeps its work)."""
    hyps: list[str] = json.loads(cache_file.read_text()) if cache_file.is_file() else []
    missing = range(len(hyps), limit)
    for start in tqdm(range(missing.start, limit, save_every), desc="pocketsphinx", disable=not progress or not missing, leave=False):
        hyps += pocketsphinx_transcribe([clips.wave(i) for i in range(start, min(start + save_every, limit))])
        cache_file.write_text(json.dumps(hyps))
    return hyps[:limit]


def pocketsphinx_clip_count(default: int = POCKETSPHINX_CLIPS) -> int:
    """How many test clips pocketsphinx transcribes: $MMSERVE_SPEECH_POCKETSPHINX_CLIPS, else `default`."""
    value = os.environ.get("MMSERVE_SPEECH_POCKETSPHINX_CLIPS", "").strip()
    if not value:
        return default
    assert value.isdigit(), f"MMSERVE_SPEECH_POCKETSPHINX_CLIPS must be a whole number, got {value!r}"
    return int(value)


def artifact_clips(artifact_dir: Path, split: str, progress: bool = False) -> SpeechClips:
    """The `split` clips ("val", "val-voices" or "test") of the data set an artifact was trained
    on (built once, then cached)."""
    training = json.loads((Path(artifact_dir) / "config.json").read_text()).get("training", {})
    sizes = {k: int(training.get(f"{k}_clips", SPLIT_SIZES[k])) for k in SPLIT_SIZES}
    cache = build_cache(Path(training.get("data_dir") or default_cache_dir()), sizes, progress=progress)
    if split == "val-voices":  # not part of the cache every run builds
        build_new_speaker_val(cache, sizes, progress=progress)
    return SpeechClips(split_dir(cache, split, sizes))


def evaluate_artifact(
    artifact_dir: Path,
    logger: RunLogger,
    device: str = "cpu",
    pocketsphinx_clips: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """WER / CER of the model (greedy and beam) on the test split, and of pocketsphinx on its
    first `pocketsphinx_clips` clips (default: `pocketsphinx_clip_count()`), with ours on the
    same clips for a fair comparison."""
    model = load_speech_model(artifact_dir, device)
    clips = artifact_clips(artifact_dir, "test", progress)
    parts = ServedParts(model, [clips.wave(i) for i in range(len(clips))])
    texts = [clips.text(i) for i in range(len(clips))]
    weight, configured_lm_weight = model.config.ctc_decode_weight, model.config.lm_weight
    lm_weight = configured_lm_weight if model.lm is not None else 0.0
    metrics: dict[str, float] = {"clips": float(len(clips)), "ctc_decode_weight": weight, "lm_weight": lm_weight,
                                 "beam_size": float(BEAM_SIZE)}  # fmt: skip
    hyps: dict[str, list[str]] = {}
    audio_s = sum(len(clips.wave(i)) for i in range(len(clips))) / 16000
    # The served decoding (joint CTC/attention and LM fusion when the artifact says so), then,
    # for the record, without the LM and the speller alone.
    runs = [("greedy", 1, weight, lm_weight), ("beam", BEAM_SIZE, weight, lm_weight)]
    if lm_weight > 0:
        runs += [("no_lm_greedy", 1, weight, 0.0), ("no_lm_beam", BEAM_SIZE, weight, 0.0)]
    if weight > 0 or lm_weight > 0:
        runs += [("speller_greedy", 1, 0.0, 0.0), ("speller_beam", BEAM_SIZE, 0.0, 0.0)]
    for name, beam, run_weight, run_lm_weight in runs:
        model.config.ctc_decode_weight, model.config.lm_weight = run_weight, run_lm_weight
        started = time.monotonic()
        hyps[name] = parts.join(transcribe(model, parts.features, beam_size=beam, progress=progress, desc=name))
        seconds = time.monotonic() - started
        rates = error_rates(texts, hyps[name])
        metrics.update({f"{name}_wer": rates["wer"], f"{name}_cer": rates["cer"], f"{name}_rtf": seconds / audio_s})
    model.config.ctc_decode_weight, model.config.lm_weight = weight, configured_lm_weight
    # Robustness: the same clips with half a second of their own background before and after
    # (real recordings rarely start and end at the speech), served decoding.
    padded = ServedParts(model, silence_padded([clips.wave(i) for i in range(len(clips))]))
    hyps["beam_padded"] = padded.join(transcribe(model, padded.features, beam_size=BEAM_SIZE, progress=progress, desc="beam, padded"))
    rates = error_rates(texts, hyps["beam_padded"])
    metrics.update({"beam_wer_silence_padded": rates["wer"], "beam_cer_silence_padded": rates["cer"]})
    # Recordings of several sentences, cut and joined as the server does: 2 test clips in one
    # (~6 s: those within the segment length decoded whole, the rest cut) and 4 (~12 s).
    for name, per_recording in (("two_sentences", 2), ("long_form", LONG_FORM_CLIPS)):
        recordings = long_recordings(clips, min(per_recording, len(clips)))
        joined_parts = ServedParts(model, [w for w, _ in recordings])
        joined = joined_parts.join(transcribe(model, joined_parts.features, beam_size=BEAM_SIZE, progress=progress, desc=name))
        rates = error_rates([t for _, t in recordings], joined)
        metrics.update({f"beam_wer_{name}": rates["wer"], f"beam_cer_{name}": rates["cer"],
                        f"{name}_recordings": float(len(recordings))})  # fmt: skip
    # Where the errors are: clips whose voice has an accent, a speaker variant, or both that
    # training never heard (e.g. beam_wer_new_accent, clips_new_variant).
    # And by what augmentation did to the recording (e.g. beam_wer_reverberant, clips_clean).
    novelty = [voice_novelty(clips.clips[i]["voice"]) for i in range(len(clips))]
    condition = [recording_condition(clips.clips[i]) for i in range(len(clips))]
    for groups in (novelty, condition):
        for name in ("greedy", "beam"):
            for group, rates in error_rates_by_group(texts, hyps[name], groups).items():
                metrics.update({f"{name}_wer_{group}": rates["wer"], f"{name}_cer_{group}": rates["cer"]})
        metrics.update({f"clips_{group}": float(groups.count(group)) for group in sorted(set(groups))})
    if model.ctc is not None:
        hyps["ctc_greedy"] = parts.join(ctc_transcribe(model, parts.features))
        rates = error_rates(texts, hyps["ctc_greedy"])
        metrics.update({"ctc_greedy_wer": rates["wer"], "ctc_greedy_cer": rates["cer"]})
    limit = min(pocketsphinx_clip_count() if pocketsphinx_clips is None else pocketsphinx_clips, len(clips))
    if limit > 0:
        try:
            sphinx = pocketsphinx_cached(clips, clips.directory / "pocketsphinx.json", limit, progress)
        except ImportError:
            sphinx = None  # optional dependency: `pip install mmserve[eval]`
        if sphinx is not None:
            rates = error_rates(texts[:limit], sphinx)
            metrics.update({"pocketsphinx_wer": rates["wer"], "pocketsphinx_cer": rates["cer"],
                            "pocketsphinx_clips": float(limit)})  # fmt: skip
            for name in ("greedy", "beam"):
                same = error_rates(texts[:limit], hyps[name][:limit])
                metrics.update({f"{name}_wer_on_pocketsphinx_clips": same["wer"],
                                f"{name}_cer_on_pocketsphinx_clips": same["cer"]})  # fmt: skip
            hyps["pocketsphinx"] = sphinx
    samples = []
    for i in range(min(20, len(texts))):
        lines = [f"ref:    {texts[i]}   [{clips.clips[i]['voice']}]"] + [f"{k}: {v[i]}" for k, v in hyps.items() if i < len(v)]
        samples.append("\n".join(lines))
    logger.log_text("\n\n".join(samples), "test_samples.txt")
    logger.log_metrics(metrics)
    return metrics
