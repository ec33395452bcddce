"""Caption data: generated "digit scenes" and a COCO-captions-format loader.

Digit scenes paste 1-4 real handwritten digits (scikit-learn's 8x8 `load_digits`, scaled
2x-3x and coloured) on a dark canvas, and caption them with every digit named in
left-to-right order plus the vertical relation between consecutive digits. The digit
*samples* are split by index (train / val / test), so the test split only shows handwriting
the model never saw: a model must read digits, not memorise them.

Every scene is a pure function of (seed, split, epoch, index), so datasets need no storage
and any scene can be regenerated exactly (tests, examples, evaluation).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmserve.plugins.handwriting import SPLITS, digit_bank, split_samples
from mmserve.plugins.media import fit_to_canvas, image_to_tensor
from mmserve.plugins.nn.vocab import Vocabulary

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Bright, well separated colours on a dark background; the names are caption words.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 50, 50),
    "green": (50, 210, 60),
    "blue": (60, 110, 255),
    "yellow": (240, 225, 40),
    "white": (240, 240, 240),
    "purple": (175, 70, 235),
}
COLOURS = tuple(PALETTE)

CANVAS_HEIGHT, CANVAS_WIDTH = 48, 112
MIN_SIZE, MAX_SIZE = 16, 24  # digit side in pixels: 2x-3x the 8x8 originals
MIN_GAP = 2  # horizontal pixels between digits, so left-to-right order is never ambiguous
# Two vertical bands. Digits in the same band differ by at most 2*JITTER in centre height,
# digits in different bands by at least BAND_CENTRES gap - 2*JITTER, so "left of" (same band)
# and "above"/"below" (different bands) can never be confused.
BAND_CENTRES = (13, 35)
JITTER = 2
RELATION_WORDS = {"same": "left of", "up": "above", "down": "below"}

# Probability that training uses each reference template; greedy decoding then settles on the
# first template instead of dithering between equally likely openings.
TEMPLATE_WEIGHTS = (0.5, 0.25, 0.25)

_TOKEN = re.compile(r"[\w']+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case words and single punctuation marks: the tokens of vocabularies and metrics."""
    return _TOKEN.findall(text.lower())


def normalize_caption(text: str) -> str:
    return " ".join(tokenize(text))


def digit_words(caption: str) -> list[int]:
    """The digits named in a caption, in order (how "digit accuracy" reads a caption)."""
    index = {word: digit for digit, word in enumerate(NUMBER_WORDS)}
    return [index[w] for w in tokenize(caption) if w in index]


@dataclass(frozen=True)
class PlacedDigit:
    label: int  # 0-9
    sample: int  # index into digit_bank()
    colour: str  # key of PALETTE
    x: int  # left edge, pixels
    y: int  # top edge, pixels
    size: int  # side, pixels


@dataclass(frozen=True)
class Scene:
    digits: tuple[PlacedDigit, ...]  # left to right
    relations: tuple[str, ...]  # len(digits) - 1 keys of RELATION_WORDS: digit i relative to i+1
    background: int  # dark grey level 0..255
    noise_seed: int
    train_template: int  # which reference training shows for this scene

    @property
    def labels(self) -> list[int]:
        return [d.label for d in self.digits]

    def references(self) -> list[str]:
        """Three differently worded captions that all name every digit in left-to-right order."""
        named = [f"{d.colour} {NUMBER_WORDS[d.label]}" for d in self.digits]
        with_article, bare = [f"a {named[0]}"], [named[0]]
        for relation, name in zip(self.relations, named[1:]):
            with_article.append(f"{RELATION_WORDS[relation]} a {name}")
            bare.append(f"{RELATION_WORDS[relation]} {name}")
        listing = "from left to right : " + " , ".join(named)
        return [" ".join(with_article), " ".join(bare), listing]


def _scene_rng(seed: int, split: str, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), epoch, index])


def sample_scene(split: str, index: int, seed: int = 0, epoch: int = 0, max_digits: int = 4) -> Scene:
    """The scene layout (no pixels yet) for one (seed, split, epoch, index)."""
    assert 1 <= max_digits <= 4, f"a {CANVAS_WIDTH}px canvas holds 1-4 digits, got max_digits={max_digits}"
    rng = _scene_rng(seed, split, epoch, index)
    count = int(rng.integers(1, max_digits + 1))
    sizes = rng.integers(MIN_SIZE, MAX_SIZE + 1, count)
    # Split the free width into count+1 random gaps (before, between, after the digits).
    free = CANVAS_WIDTH - int(sizes.sum()) - MIN_GAP * (count - 1)
    assert free >= 0, "digits do not fit the canvas"
    cuts = np.sort(rng.integers(0, free + 1, count))
    gaps = np.diff(np.concatenate([[0], cuts, [free]]))  # [count + 1], sums to free
    bands = rng.integers(0, 2, count)
    pool = split_samples(split)
    labels = digit_bank()[1]
    digits, x = [], int(gaps[0])
    for i in range(count):
        size = int(sizes[i])
        centre = BAND_CENTRES[bands[i]] + int(rng.integers(-JITTER, JITTER + 1))
        y = min(max(centre - size // 2, 0), CANVAS_HEIGHT - size)
        sample = int(rng.choice(pool))
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        digits.append(PlacedDigit(int(labels[sample]), sample, colour, x, y, size))
        x += size + MIN_GAP + int(gaps[i + 1])
    relations = tuple(
        "same" if bands[i] == bands[i + 1] else ("up" if bands[i] < bands[i + 1] else "down") for i in range(count - 1)
    )
    return Scene(
        digits=tuple(digits),
        relations=relations,
        background=int(rng.integers(0, 30)),
        noise_seed=int(rng.integers(2**31)),
        train_template=int(rng.choice(len(TEMPLATE_WEIGHTS), p=TEMPLATE_WEIGHTS)),
    )


@functools.cache
def _glyph(sample: int, size: int) -> np.ndarray:
    """Digit `sample` scaled to size x size, as an alpha mask float32 in 0..1."""
    image = Image.fromarray(digit_bank()[0][sample], mode="F").resize((size, size), Image.BILINEAR)
    return np.clip(np.asarray(image), 0.0, 1.0)


def render_scene(scene: Scene) -> np.ndarray:
    """Pixels of a scene: uint8 [CANVAS_HEIGHT, CANVAS_WIDTH, 3]."""
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, 4.0, (CANVAS_HEIGHT, CANVAS_WIDTH, 1))
    canvas = np.full((CANVAS_HEIGHT, CANVAS_WIDTH, 3), float(scene.background), np.float32) + noise
    for d in scene.digits:
        alpha = _glyph(d.sample, d.size)[..., None]  # [s, s, 1]
        region = canvas[d.y : d.y + d.size, d.x : d.x + d.size]
        region[:] = region * (1.0 - alpha) + np.asarray(PALETTE[d.colour], np.float32) * alpha
    return np.clip(canvas, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class SceneExample:
    png: bytes
    references: list[str]
    labels: list[int]


def make_example(index: int, split: str = "test", seed: int = 0) -> SceneExample:
    """One scene as PNG bytes plus its reference captions (for examples, docs and tests)."""
    scene = sample_scene(split, index, seed)
    return SceneExample(png_bytes(render_scene(scene)), scene.references(), scene.labels)


def scene_vocabulary() -> Vocabulary:
    """Every word a digit-scene caption can use (fixed, so it never depends on sampling)."""
    words = {*NUMBER_WORDS, *COLOURS, "a", "from", "left", "to", "right", ":", ","}
    words.update(w for phrase in RELATION_WORDS.values() for w in phrase.split())
    return Vocabulary(sorted(words))


def encode_caption(vocab: Vocabulary, caption: str) -> torch.Tensor:
    return torch.tensor(vocab.encode(normalize_caption(caption)), dtype=torch.long)  # [T] with <bos>/<eos>


class DigitScenes(Dataset):
    """`size` scenes of one split as (image [3, H, W], caption ids [T]) pairs.

    `set_epoch(e)` draws a fresh set of training scenes each epoch (same handwriting pool,
    new layouts), which is cheap since scenes are generated on the fly.
    """

    def __init__(
        self,
        split: str,
        size: int,
        vocab: Vocabulary,
        image_size: Sequence[int] = (CANVAS_HEIGHT, CANVAS_WIDTH),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        seed: int = 0,
        max_digits: int = 4,
        augment: float = 0.0,
    ):
        assert split in SPLITS, f"split must be one of {SPLITS}, got {split!r}"
        assert size > 0, f"size must be positive, got {size}"
        assert 0.0 <= augment <= 1.0, f"augment is a probability, got {augment}"
        self.split, self.size, self.vocab, self.seed, self.max_digits = split, size, vocab, seed, max_digits
        self.augment = augment  # share of scenes drawn at another size / canvas (augment.augmented_pixels)
        self.image_size, self.mean, self.std = tuple(image_size), tuple(mean), tuple(std)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        return sample_scene(self.split, index, self.seed, self.epoch, self.max_digits)

    def pixels(self, index: int) -> np.ndarray:
        """The scene's picture: as drawn for the canvas, or (a share `augment` of scenes, fixed
        per seed, epoch and index) at another size, canvas shape and background."""
        scene = self.scene(index)
        if self.augment > 0:
            rng = np.random.default_rng([self.seed, SPLITS.index(self.split), self.epoch, index, 1])
            if rng.random() < self.augment:
                from mmserve.plugins.captioning.augment import augmented_pixels  # it imports this module

                return augmented_pixels(scene, rng)
        return render_scene(scene)

    def image(self, index: int) -> torch.Tensor:
        # The served preprocessing (aspect kept); a canvas-sized picture passes through unchanged.
        return image_to_tensor(fit_to_canvas(self.pixels(index), self.image_size), self.image_size, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene = self.scene(index)
        return self.image(index), encode_caption(self.vocab, scene.references()[scene.train_template])


def collate_captions(
    batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images [B, 3, H, W] and right-pad caption ids to [B, T_max] with `pad_id`."""
    images = torch.stack([image for image, _ in batch])
    captions = torch.nn.utils.rnn.pad_sequence([ids for _, ids in batch], batch_first=True, padding_value=pad_id)
    return images, captions


class CocoCaptions(Dataset):
    """A COCO-captions-format dataset: one (image [3, H, W], caption ids [T]) item per caption.

    `annotations` is a JSON file with "images" [{"id", "file_name"}] and "annotations"
    [{"image_id", "caption"}]; file names are relative to `image_dir`. Without a `vocab`, one
    is built from these captions (words seen at least `min_count` times).
    """

    def __init__(
        self,
        annotations: Path,
        image_dir: Path,
        vocab: Vocabulary | None = None,
        image_size: Sequence[int] = (CANVAS_HEIGHT, CANVAS_WIDTH),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        min_count: int = 1,
    ):
        data = json.loads(Path(annotations).read_text())
        for key in ("images", "annotations"):
            assert key in data, f"{annotations} is not COCO-captions format: no {key!r} list"
        self.image_dir = Path(image_dir)
        self.files: dict[int, str] = {int(img["id"]): img["file_name"] for img in data["images"]}
        self.items: list[tuple[int, str]] = []
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            assert image_id in self.files, f"annotation refers to unknown image id {image_id}"
            self.items.append((image_id, normalize_caption(ann["caption"])))
        self.vocab = vocab if vocab is not None else Vocabulary.build((c for _, c in self.items), min_count)
        self.image_size, self.mean, self.std = tuple(image_size), tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, image_id: int) -> torch.Tensor:
        with Image.open(self.image_dir / self.files[image_id]) as image:
            return image_to_tensor(image.convert("RGB"), self.image_size, self.mean, self.std)

    def references(self) -> dict[int, list[str]]:
        """Every image's captions (normalised), for BLEU/CIDEr."""
        refs: dict[int, list[str]] = {image_id: [] for image_id in self.files}
        for image_id, caption in self.items:
            refs[image_id].append(caption)
        return refs

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id, caption = self.items[index]
        return self.image(image_id), encode_caption(self.vocab, caption)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mmserve.plugins.captioning.data --split test --index 7 --out scene.png`: write one
    scene as PNG and print its reference captions (one per line)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("scene.png"))
    args = parser.parse_args(argv)
    example = make_example(args.index, args.split, args.seed)
    args.out.write_bytes(example.png)
    print("\n".join(example.references))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
