"""Synthetic English speech: espeak-ng voices reading sentences of frequent words and numbers.

Nothing can be downloaded, so the bundled model learns from espeak-ng:
- voices are (accent, variant) pairs: 8 English accents x ~45 speaker variants, with speed,
  pitch and amplitude drawn per clip;
- the test split holds voices never heard in training: two whole accents and eight whole
  variants are kept out of training, and its sentences never occur in training;
- random speaker variants (random_voices.py) give more speakers: the "train-voices" clips
  (training accents, a new speaker each), "train-voices-varied" (speakers that also vary in
  voice source: Klatt, breath, tone), "train-accents" (varied speakers with a random accent
  of their own on top of a training accent) and "val-voices" (the val sentences read by speakers
  never heard in training, to measure what a new speaker costs without the test clips);
- augmentation (train and test alike, seeded): gain, synthetic room impulse responses,
  an 8 kHz telephone band on part of the clips, and noise at 5-30 dB SNR.

`build_split` writes one split to a cache directory once (int16 waveforms, transcripts and
voice names); `SpeechClips` reads it back.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm import tqdm

from mmserve.plugins.speech.random_voices import RandomVariant, data_dir_for, split_speakers
from mmserve.plugins.speech.text import normalize_text

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050

# English accents espeak-ng ships (the mbrola voices need extra packages, so none of those).
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
HELD_OUT_ACCENTS = ("en-us-nyc", "en-gb-x-gbcwmd")
# Speaker variants (espeak-ng-data/voices/!v); robots, whispers and croaks left out.
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "adam", "anika", "announcer", "aunty",
    "benjamin", "caleb", "david", "ed", "edward", "grandma", "iven", "john", "linda", "max", "norbert",
    "paul", "quincy", "rob", "robert", "shelby", "steph", "travis", "victor", "klatt", "klatt3", "Andy",
    "Annie", "Lee", "Mike",
)  # fmt: skip
HELD_OUT_VARIANTS = ("m6", "f4", "belinda", "grandpa", "zac", "klatt2", "Alex", "michel")

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3, "train-extra": 4, "train-voices": 5, "val-voices": 6,
               "train-voices-varied": 7, "train-accents": 8}  # fmt: skip
# Their clips have random speaker variants; "train-voices-varied" ones vary in voice source too,
# "train-accents" ones in accent as well.
RANDOM_VOICE_SPLITS = ("train-voices", "val-voices", "train-voices-varied", "train-accents")


class EspeakMissing(RuntimeError):
    """espeak-ng is not installed, so synthetic speech cannot be generated."""


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakMissing(
            "espeak-ng is not installed; synthetic speech data cannot be generated "
            "(install it with `apt-get install espeak-ng`, or `make install` as root). "
            "Serving works without it, with the bundled weights."
        )
    return path


def voices(split: str) -> list[str]:
    """espeak-ng voice names `accent+variant` of a split. Train and val share voices; every
    test voice is a pair never heard in training, most with an unseen accent or variant."""
    pairs = [(a, v) for a in TRAIN_ACCENTS + HELD_OUT_ACCENTS for v in TRAIN_VARIANTS + HELD_OUT_VARIANTS]
    held = [(a, v) for a, v in pairs if a in HELD_OUT_ACCENTS or v in HELD_OUT_VARIANTS]
    seen = [p for p in pairs if p not in held]
    return [f"{a}+{v}" for a, v in (held if split == "test" else seen)]


def voice_novelty(voice: str) -> str:
    """What a voice `accent+variant` holds that training never heard: "new_accent",
    "new_variant", "new_accent_and_variant", or "seen" (training and val voices)."""
    accent, _, variant = voice.partition("+")
    new_accent, new_variant = accent in HELD_OUT_ACCENTS, variant in HELD_OUT_VARIANTS
    if new_accent and new_variant:
        return "new_accent_and_variant"
    return "new_accent" if new_accent else "new_variant" if new_variant else "seen"


NOISY_BELOW_DB = 20.0  # noise this loud or louder makes a clip "noisy"


def recording_condition(clip: dict) -> str:
    """What augmentation did to a clip (its metadata), the harshest first: "telephone" (8 kHz
    band), "reverberant", "noisy" (SNR below 20 dB) or "clean" (dry, wideband, quieter noise
    or none), so that the error rates can be read apart from the voice."""
    if clip.get("telephone"):
        return "telephone"
    if clip.get("reverb"):
        return "reverberant"
    snr = clip.get("snr_db")
    return "noisy" if snr is not None and snr < NOISY_BELOW_DB else "clean"


# ----- text ---------------------------------------------------------------------------------


def frequent_words(count: int = 3000) -> list[str]:
    """The `count` most frequent English words (wordfreq), letters and apostrophes only."""
    from wordfreq import top_n_list

    words = [normalize_text(w) for w in top_n_list("en", count)]
    # wordfreq splits contractions ("i'm" -> "i", "m"); the clitic fragments are not words.
    return [w for w in words if w and " " not in w and w not in _FRAGMENTS and (len(w) > 1 or w in ("a", "i"))]


_FRAGMENTS = {"s", "t", "m", "re", "ll", "ve", "d", "nt", "don", "didn", "doesn", "isn", "wasn", "couldn", "wouldn"}


def number_words(value: int) -> str:
    from num2words import num2words

    return normalize_text(num2words(value))


def make_sentence(rng: random.Random, words: list[str], min_words: int = 3, max_words: int = 9) -> str:
    """A lower-case sentence of frequent words (Zipf-ish: common words more often), one in
    four with a number spoken as words."""
    length = rng.randint(min_words, max_words)
    # Rank r drawn with weight ~ 1 / (r + 20): frequent words dominate but rare ones appear.
    out = [words[min(int(math.exp(rng.uniform(math.log(20), math.log(len(words) + 20)))) - 20, len(words) - 1)]
           for _ in range(length)]  # fmt: skip
    if rng.random() < 0.25:
        value = rng.choice([rng.randint(0, 20), rng.randint(21, 100), rng.randint(100, 1000), rng.randint(1900, 2030)])
        out.insert(rng.randint(0, len(out)), number_words(value))
    return normalize_text(" ".join(out))


def split_sentences(split: str, count: int, words: list[str], exclude: set[str] | None = None) -> list[str]:
    """`count` distinct sentences for a split, none of them in `exclude`."""
    rng = random.Random(SPLIT_SEEDS[split] * 7919)
    exclude = exclude or set()
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        sentence = make_sentence(rng, words)
        if sentence and sentence not in exclude and sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


# ----- audio --------------------------------------------------------------------------------


@dataclass
class Voice:
    name: str  # accent+variant
    speed: int  # words per minute
    pitch: int  # 0-99
    amplitude: int  # 0-200
    variant: RandomVariant | None = None  # a random speaker (random_voices.py), named in `name`
    split: str = ""  # ... of this split's speakers


def espeak_voices_dir() -> Path:
    """Where the copy of espeak-ng's data with the random speaker variants lives."""
    return default_cache_dir() / "espeak-voices"


# espeak-ng (1.51) finds "en-gb" by its language line and then drops the "+variant": every
# "en-gb+m3" spoke as plain en-gb, one speaker for a sixth of the training clips. The same
# voice's file is named "en", and "en+m3" keeps the variant.
_ESPEAK_ACCENT_NAMES = {"en-gb": "en"}


def espeak_voice_name(voice: str) -> str:
    """The name to give espeak-ng for a voice `accent+variant`, so that the variant is used."""
    accent, plus, variant = voice.partition("+")
    return _ESPEAK_ACCENT_NAMES.get(accent, accent) + plus + variant


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """espeak-ng speech for `text` -> float32 waveform at 16 kHz."""
    args = [espeak_binary(), "-v", espeak_voice_name(voice.name), "-s", str(voice.speed), "-p", str(voice.pitch),
            "-a", str(voice.amplitude), "--stdout", text]  # fmt: skip
    if voice.variant is not None:
        args.insert(1, f"--path={data_dir_for(voice.split, espeak_voices_dir())}")
    raw = subprocess.run(args, capture_output=True, check=True, timeout=60).stdout
    assert raw[:4] == b"RIFF" and len(raw) > 44, f"espeak-ng gave no WAV for {voice.name!r}"
    # Streaming output: the header's sizes are placeholders, the samples start at byte 44.
    samples = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype=np.int16).astype(np.float32) / 32768.0
    wave = AF.resample(torch.from_numpy(samples), ESPEAK_RATE, SAMPLE_RATE)
    return wave.numpy()


def room_impulse_response(rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic RIR: direct path, then exponentially decaying noise (RT60 0.15-0.7 s)."""
    rt60 = rng.uniform(0.15, 0.7)
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[: int(0.003 * sample_rate)] = 0.0  # the first reflections arrive a few ms late
    rir = tail * rng.uniform(0.1, 0.4)
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def telephone_band(wave: np.ndarray) -> np.ndarray:
    """8 kHz telephone channel: down to 8 kHz and back, 300-3400 Hz band."""
    x = AF.resample(torch.from_numpy(wave), SAMPLE_RATE, 8000)
    x = AF.highpass_biquad(x, 8000, 300.0)
    x = AF.lowpass_biquad(x, 8000, 3400.0)
    return AF.resample(x, 8000, SAMPLE_RATE).numpy()


def add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """White or brown-ish noise at `snr_db` relative to the clip's power."""
    noise = rng.standard_normal(len(wave)).astype(np.float32)
    if rng.random() < 0.5:  # low-frequency rumble: integrate white noise, remove drift
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    power = float(np.mean(wave**2)) + 1e-10
    noise *= math.sqrt(power / (float(np.mean(noise**2)) + 1e-10) / 10 ** (snr_db / 10))
    return wave + noise


def augment(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Reverb (50 %), telephone band (20 %), noise at 5-30 dB SNR (80 %), gain -10..+3 dB."""
    info: dict = {}
    if rng.random() < 0.5:
        rir = torch.from_numpy(room_impulse_response(rng))
        wave = AF.fftconvolve(torch.from_numpy(wave), rir)[: len(wave)].numpy().astype(np.float32)
        info["reverb"] = True
    if rng.random() < 0.2:
        wave = telephone_band(wave)
        info["telephone"] = True
    if rng.random() < 0.8:
        info["snr_db"] = round(float(rng.uniform(5, 30)), 1)
        wave = add_noise(wave, rng, info["snr_db"])
    peak = float(np.abs(wave).max()) + 1e-9
    gain = 10 ** (rng.uniform(-10, 3) / 20)
    wave = wave / peak * 0.9 * min(gain, 1.0 / 0.9)  # never clip
    return wave.astype(np.float32), info


def clip_voice(split: str, index: int) -> Voice:
    rng = random.Random(zlib.crc32(f"{split}/{index}/voice".encode()))
    if split in RANDOM_VOICE_SPLITS:  # a training accent and a speaker of its own
        accent, variant = rng.choice(TRAIN_ACCENTS), rng.choice(split_speakers(split))
        return Voice(f"{accent}+{variant.name}", rng.randint(130, 200), rng.randint(25, 75), rng.randint(70, 150), variant, split)
    return Voice(rng.choice(voices(split)), rng.randint(130, 200), rng.randint(25, 75), rng.randint(70, 150))


def make_clip(split: str, index: int, text: str) -> tuple[np.ndarray, dict]:
    """One seeded clip: synthesise `text` with the split's voice for `index`, then augment."""
    voice = clip_voice(split, index)
    wave = synthesize(text, voice)
    wave, info = augment(wave, np.random.default_rng(zlib.crc32(f"{split}/{index}/aug".encode())))
    if voice.variant is not None:
        info["formant_scale"] = round(voice.variant.formant_scale, 3)
    return wave, {"text": text, "voice": voice.name, "speed": voice.speed, "pitch": voice.pitch, **info}


# ----- cache --------------------------------------------------------------------------------

SPLIT_SIZES = {"train": 6000, "val": 200, "test": 300}


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("MMSERVE_DATA_DIR", Path.home() / ".mmserve")) / "speech-data"


def split_texts(sizes: dict[str, int]) -> dict[str, list[str]]:
    """Sentences of every split; test and val sentences never occur in training."""
    words = frequent_words()
    train = split_sentences("train", sizes["train"], words)
    val = split_sentences("val", sizes["val"], words, exclude=set(train))
    test = split_sentences("test", sizes["test"], words, exclude=set(train) | set(val))
    return {"train": train, "val": val, "test": test}


def build_split(cache_dir: Path, split: str, texts: list[str], workers: int = 4, progress: bool = True,
                folder: str | None = None, first_index: int = 0) -> Path:  # fmt: skip
    """Write `split` (waves.npy int16 concatenated, index.json) under `cache_dir` (in `folder`,
    default the split's name) unless present. Clip i is seeded as clip `first_index + i` of the
    split, so a split written in shards holds the very clips it would hold in one piece."""
    out = Path(cache_dir) / (folder or split)
    index_file = out / "index.json"
    if index_file.is_file() and len(json.loads(index_file.read_text())["clips"]) == len(texts):
        return out
    espeak_binary()
    out.mkdir(parents=True, exist_ok=True)
    # espeak-ng runs as a subprocess, so threads overlap its work without extra Python processes.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = pool.map(lambda item: make_clip(split, first_index + item[0], item[1]), enumerate(texts))
        clips = list(tqdm(jobs, total=len(texts), desc=f"espeak-ng {split}", disable=not progress))
    waves = [np.clip(np.round(w * 32767), -32768, 32767).astype(np.int16) for w, _ in clips]
    offsets = np.cumsum([0] + [len(w) for w in waves]).tolist()
    # Written under temporary names and renamed, the index last: a reader (another process
    # polling for finished shards, or a later run after a crash) never sees half a split.
    np.save(out / "waves.tmp.npy", np.concatenate(waves))
    (out / "waves.tmp.npy").replace(out / "waves.npy")
    meta = [{**info, "start": offsets[i], "end": offsets[i + 1]} for i, (_, info) in enumerate(clips)]
    (out / "index.tmp.json").write_text(json.dumps({"sample_rate": SAMPLE_RATE, "clips": meta}))
    (out / "index.tmp.json").replace(index_file)
    return out


def build_cache(cache_dir: Path | None = None, sizes: dict[str, int] | None = None, workers: int = 4,
                progress: bool = True) -> Path:  # fmt: skip
    """Generate every split once (train, val, test); returns the cache directory."""
    cache_dir = Path(cache_dir or default_cache_dir())
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    texts = split_texts(sizes)
    for split in ("test", "val", "train"):
        build_split(split_dir(cache_dir, split, sizes).parent, split, texts[split], workers, progress)
    return cache_dir


EXTRA_SHARD_CLIPS = 1000  # extra clips are written in shards: a larger count reuses the smaller one's


def extra_sentences(sizes: dict[str, int], count: int, split: str = "train-extra") -> list[str]:
    """Sentences of the extra training clips of `split` ("train-extra", "train-voices",
    "train-voices-varied" or "train-accents", each seeded by its name), none of them in val or test. The first n
    of a larger count are the n of a smaller one."""
    texts = split_texts(sizes)
    return split_sentences(split, count, frequent_words(), exclude=set(texts["val"]) | set(texts["test"]))


def extra_shards(count: int, shard_clips: int = EXTRA_SHARD_CLIPS) -> list[tuple[int, int]]:
    """[start, end) clip ranges of the shards that hold `count` extra clips."""
    return [(start, min(start + shard_clips, count)) for start in range(0, count, shard_clips)]


def extra_shard_folder(start: int, end: int, split: str = "train-extra") -> str:
    return f"{split}/{start:07d}-{end:07d}"


def build_extra_shard(parent: Path, texts: list[str], start: int, workers: int = 1) -> Path:
    """The shard of extra clips `start`.. reading `texts` under `parent` (the training split's
    folder). Module-level and with one torch thread, so a process pool can run one per core."""
    torch.set_num_threads(1)
    return build_split(parent, "train-extra", texts, workers, False, extra_shard_folder(start, start + len(texts)), start)


def build_extra_train(cache_dir: Path, sizes: dict[str, int], count: int, workers: int = 4, progress: bool = True,
                      shard_clips: int = EXTRA_SHARD_CLIPS, split: str = "train-extra") -> list[Path]:  # fmt: skip
    """`count` more training clips beside the training split, in shards of `shard_clips`:
    "train-extra", the training voices with fresh draws of speed, pitch, amplitude and
    augmentation, or "train-voices", "train-voices-varied" and "train-accents", a random speaker variant each
    (random_voices.py), reading sentences of their own that never occur in val or test. The val and test splits stay as
    they are, so a model trained with them is scored on the very same clips. Returns the shard
    folders; shards already written are reused (see clip_stream.py to write them while training)."""
    sentences = extra_sentences(sizes, count, split)
    parent = split_dir(cache_dir, "train", sizes).parent
    shards = extra_shards(count, shard_clips)
    bar = tqdm(shards, desc=f"espeak-ng {split} clips", unit="shard", disable=not progress)
    return [build_split(parent, split, sentences[a:b], workers, False, extra_shard_folder(a, b, split), a) for a, b in bar]


def build_new_speaker_val(cache_dir: Path, sizes: dict[str, int], workers: int = 4, progress: bool = True) -> Path:
    """"val-voices": the val sentences read by random speaker variants never heard in training
    (training accents). Beside the val clips (the same sentences, training speakers), what a
    new speaker costs, measured without the test clips."""
    return build_split(split_dir(cache_dir, "val-voices", sizes).parent, "val-voices", split_texts(sizes)["val"], workers, progress)


class SpeechClips:
    """A cached split: waveforms (float32 [N] at 16 kHz) and transcripts."""

    def __init__(self, split_dir: Path):
        self.directory = Path(split_dir)
        index = json.loads((Path(split_dir) / "index.json").read_text())
        assert index["sample_rate"] == SAMPLE_RATE, f"{split_dir} is at {index['sample_rate']} Hz"
        self.clips: list[dict] = index["clips"]
        self.waves = np.load(Path(split_dir) / "waves.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.clips)

    def wave(self, i: int) -> np.ndarray:
        c = self.clips[i]
        return np.asarray(self.waves[c["start"] : c["end"]], dtype=np.float32) / 32768.0

    def text(self, i: int) -> str:
        return self.clips[i]["text"]

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        for i in range(len(self)):
            yield self.wave(i), self.text(i)


def split_dir(cache_dir: Path, split: str, sizes: dict[str, int]) -> Path:
    """Where a split lives: val and test sentences exclude the training ones, so their folder
    names the training size too."""
    sized = "val" if split == "val-voices" else split  # the val sentences, new speakers
    key = f"{sizes['train']}" if split == "train" else f"{sizes[sized]}-of-{sizes['train']}"
    return Path(cache_dir) / key / split
