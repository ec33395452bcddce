"""Speakers espeak-ng never shipped: random speaker variants, drawn from seeds.

espeak-ng ships ~45 English speaker variants, and training hears 39 of them: few speakers, so
a held-out one whose vocal tract lies outside theirs (variant `zac`: every formant at 145 %)
is transcribed worse than nonsense. A random variant scales every formant frequency by one
factor, the vocal tract length (0.8-1.5: adult men to children), with a little jitter per
formant; it draws their heights and widths, the pitch base and range, flutter and roughness.
Each split with random speakers has `SPEAKERS` of its own. The speakers of a "varied" split
(`VARIED_SPLITS`) also differ in how their voice is made, as the shipped variants do: some
speak through the Klatt synthesiser (its voice sources 1-6), with breath noise on their formants,
a tone curve (spectral tilt), other voicing and consonant strengths, and a wider pitch range.
The speakers of an "accent" split (`ACCENT_SPLITS`) are varied speakers with an accent of their
own too: a few of the sound shifts that set Englishes apart (vowels merged or moved, "th" as t,
d, s or f, w and v swapped, final consonants devoiced ...), applied by espeak-ng's `replace`
rules on top of a training accent, and their own stress timing. A new accent is new rules: no
number of speakers teaches it, so accents, like speakers, are drawn rather than only shipped.

espeak-ng reads variants only from its data directory's `voices/!v` and lists at most 349
voices, so each split's speakers are written into a copy of that directory that holds the
English voices alone (made once, ~2 MB), which `synthesize` points espeak-ng at.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import shutil
import subprocess
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

PREFIX = "rand-"  # variant names: rand-<crc of the seed>
SPEAKERS = 200  # random speakers per split (with the English voices and shipped variants: < 349)
FORMANTS = 9  # espeak-ng's formant lines 0-8
FORMANT_SCALE = (0.8, 1.5)  # drawn log-uniformly; the shipped variants span ~0.56-1.45
PITCH_BASE_HZ = (65.0, 260.0)  # log-uniformly; the top of the range is 1.2-1.7 times the base
# random speakers that also vary in their voice source; those of ACCENT_SPLITS in accent as well
VARIED_SPLITS = ("train-voices-varied", "train-accents")
ACCENT_SPLITS = ("train-accents",)
# Sound shifts an accent may make, as espeak-ng's English phonemes (from, to): general ones of
# world Englishes, drawn without looking at the held-out accents' files.
VOWEL_SHIFTS = (
    ("I", "i:"), ("i:", "I"), ("U", "u:"), ("u:", "U"), ("a", "E"), ("a", "A:"), ("0", "A:"), ("0", "O:"),
    ("O:", "0"), ("O:", "A:"), ("V", "@"), ("V", "0"), ("V", "U"), ("V", "a"), ("E", "eI"), ("eI", "E"),
    ("eI", "aI"), ("aI", "A:"), ("aI", "OI"), ("oU", "O:"), ("oU", "0"), ("3:", "E"), ("3:", "V"),
    ("@", "V"), ("@", "a#"), ("@", "E"), ("aU", "a"), ("aU", "A:"),
)  # fmt: skip
CONSONANT_SHIFTS = (
    ("D", "d"), ("D", "z"), ("D", "v"), ("T", "t"), ("T", "s"), ("T", "f"), ("N", "n"), ("w", "v"),
    ("v", "w"), ("v", "b"), ("z", "s"), ("S", "s"), ("tS", "S"), ("dZ", "Z"), ("dZ", "j"), ("r", "R"),
    ("h", "x"), ("j", "dZ"),
)  # fmt: skip
FINAL_DEVOICING = (("d", "t"), ("g", "k"), ("b", "p"), ("z", "s"), ("v", "f"))  # at the end of a word only


@dataclass(frozen=True)
class RandomVariant:
    name: str
    formant_scale: float
    formants: tuple[tuple[int, int, int], ...]  # per formant: frequency, height, width (percent)
    pitch: tuple[int, int]  # base and top, Hz
    flutter: int
    roughness: int
    # Voice-source lines of a varied speaker (espeak-ng's keyword and values): klatt, breath, tone,
    # voicing, consonants; none for a plain one.
    source: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Accent lines of an accented speaker (keyword and values: replace, stressLength, stressAmp).
    accent: tuple[tuple[str, tuple[int | str, ...]], ...] = ()

    def variant_file(self) -> str:
        """The variant as espeak-ng's `voices/!v` files write one."""
        lines = ["language variant", f"name {self.name}", f"pitch {self.pitch[0]} {self.pitch[1]}",
                 f"flutter {self.flutter}", f"roughness {self.roughness}"]  # fmt: skip
        lines += [f"formant {k} {f} {h} {w}" for k, (f, h, w) in enumerate(self.formants)]
        lines += [" ".join([keyword, *map(str, values)]) for keyword, values in self.source + self.accent]
        return "\n".join(lines) + "\n"


def random_variant(seed: str, varied: bool = False, accented: bool = False) -> RandomVariant:
    """The speaker variant that `seed` draws (the same seed, the same speaker); `varied` draws
    its voice source too (`voice_source`) and a pitch range up to twice its base, `accented` an
    accent of its own (`random_accent`)."""
    rng = random.Random(zlib.crc32(f"random-variant/{seed}".encode()))
    scale = math.exp(rng.uniform(*map(math.log, FORMANT_SCALE)))
    formants = tuple((round(100 * scale * rng.uniform(0.94, 1.06)), rng.randint(70, 110), rng.randint(80, 160))
                     for _ in range(FORMANTS))  # fmt: skip
    base = math.exp(rng.uniform(*map(math.log, PITCH_BASE_HZ)))
    pitch = (round(base), round(base * rng.uniform(1.2, 2.0 if varied else 1.7)))
    name = f"{PREFIX}{zlib.crc32(seed.encode()):08x}"
    source = voice_source(random.Random(zlib.crc32(f"voice-source/{seed}".encode()))) if varied else ()
    accent = random_accent(random.Random(zlib.crc32(f"accent/{seed}".encode()))) if accented else ()
    return RandomVariant(name, scale, formants, pitch, rng.randint(0, 10), rng.randint(0, 5), source, accent)


def voice_source(rng: random.Random) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """How a varied speaker's voice is made, each trait drawn on its own (ranges from the
    shipped variants): half speak through the Klatt synthesiser, a quarter of those breathily."""
    lines: list[tuple[str, tuple[int, ...]]] = []
    if rng.random() < 0.5:
        lines.append(("klatt", (rng.randint(1, 6),)))
        if rng.random() < 0.25:  # breath noise on the upper formants (Klatt only)
            lines.append(("breath", tuple([0, 0] + [rng.randint(0, 100) for _ in range(6)])))
    if rng.random() < 0.35:  # frequency (Hz) and amplitude pairs: the spectrum's tilt
        lines.append(("tone", (rng.randint(100, 600), rng.randint(60, 255), rng.randint(1000, 1500),
                               rng.randint(20, 200), rng.randint(2000, 3000), rng.randint(10, 100))))  # fmt: skip
    if rng.random() < 0.3:
        lines.append(("voicing", (rng.randint(30, 200),)))
    if rng.random() < 0.3:
        lines.append(("consonants", (rng.randint(50, 150), rng.randint(40, 190))))
    return tuple(lines)


def random_accent(rng: random.Random) -> tuple[tuple[str, tuple[int | str, ...]], ...]:
    """An accent as espeak-ng variant lines: 1-5 sound shifts (vowels and consonants, a quarter
    of them in unstressed syllables only; espeak-ng's `replace` flag 2), word-final devoicing on
    a fifth of the speakers (flag 1), and most with their own stress timing and loudness
    (ranges around those of the training accents' files)."""
    shifts: dict[str, tuple[int, str, str]] = {}
    for _ in range(rng.randint(1, 5)):
        source, target = rng.choice(VOWEL_SHIFTS if rng.random() < 0.6 else CONSONANT_SHIFTS)
        shifts.setdefault(source, (2 if rng.random() < 0.25 else 0, source, target))
    lines: list[tuple[str, tuple[int | str, ...]]] = [("replace", (f"{f:02d}", a, b)) for f, a, b in shifts.values()]
    if rng.random() < 0.2:
        lines += [("replace", ("01", a, b)) for a, b in rng.sample(FINAL_DEVOICING, rng.randint(1, 3)) if a not in shifts]
    if rng.random() < 0.7:  # durations of unstressed ... emphasised syllables; espeak-ng's 0 0 = its default
        unstressed, secondary, primary = (rng.randint(110, 190), rng.randint(150, 220), rng.randint(220, 310))
        lines.append(("stressLength", (unstressed, unstressed - rng.randint(0, 30), secondary, secondary, 0, 0,
                                       primary, primary + rng.randint(0, 50))))  # fmt: skip
    if rng.random() < 0.4:
        lines.append(("stressAmp", tuple(rng.randint(14, 22) for _ in range(8))))
    return tuple(lines)


@functools.cache
def split_speakers(split: str, count: int = SPEAKERS) -> tuple[RandomVariant, ...]:
    """The random speakers of `split` (the same for every run)."""
    return tuple(random_variant(f"{split}/{k}", varied=split in VARIED_SPLITS, accented=split in ACCENT_SPLITS)
                 for k in range(count))  # fmt: skip


def system_data_dir() -> Path:
    """espeak-ng's own data directory (`espeak-ng --version` names it)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = re.search(r"Data at:\s*(\S+)", out)
    assert found, f"espeak-ng --version did not name its data directory: {out!r}"
    return Path(found.group(1))


# What English speech needs of espeak-ng's data: the phonemes, the English rules and voices
# (lang/gmw: English and its West Germanic kin) and the shipped speaker variants.
_ENGLISH_DATA = ("phondata", "phondata-manifest", "phonindex", "phontab", "intonations", "en_dict", "lang/gmw", "voices/!v")


def data_dir_for(split: str, root: Path) -> Path:
    """A directory to give espeak-ng as `--path`: English espeak-ng data with the random
    speakers of `split` among its variants, under `root`/`split` (made once; safe to call from
    many threads and processes at once)."""
    out = Path(root) / split
    if (out / "espeak-ng-data").is_dir():
        return out
    source = system_data_dir()
    staging = Path(root) / f"{split}.{os.getpid()}.{threading.get_ident()}.tmp"
    for part in _ENGLISH_DATA:
        copy = shutil.copytree if (source / part).is_dir() else shutil.copy2
        (staging / "espeak-ng-data" / part).parent.mkdir(parents=True, exist_ok=True)
        copy(source / part, staging / "espeak-ng-data" / part)
    for variant in split_speakers(split):
        (staging / "espeak-ng-data" / "voices" / "!v" / variant.name).write_text(variant.variant_file())
    try:
        staging.rename(out)
    except OSError:  # another writer got there first
        shutil.rmtree(staging, ignore_errors=True)
    return out
