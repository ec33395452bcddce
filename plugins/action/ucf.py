"""A UCF-101-style loader: class folders of video files plus split lists.

Layout (as UCF-101 ships it):

    root/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi ...
    splits/classInd.txt       "1 ApplyEyeMakeup"          (1-based class index, class name)
    splits/trainlist01.txt    "ApplyEyeMakeup/v_..._c01.avi 1"
    splits/testlist01.txt     "ApplyEyeMakeup/v_..._c01.avi"

Each item is (frames uint8 [T, 3, H, W] from the shared video decoder, caption ids of the one
class token); the vocabulary's words are the class names, so the same model and decoder
serve single-label datasets (`ActionConfig.mode="label"`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmserve.plugins.media import decode_video
from mmserve.plugins.nn.vocab import Vocabulary


def read_class_index(path: Path) -> list[str]:
    """Class names in index order from classInd.txt ("<1-based index> <name>" per line)."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<index> <class name>', got {line!r}")
        entries.append((int(parts[0]), parts[1]))
    entries.sort()
    if [i for i, _ in entries] != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(entries)} without gaps")
    return [name for _, name in entries]


def read_split(path: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(relative video path, class index 0-based) per line of a train/test list.

    Train lists carry the 1-based label; test lists do not, so the label comes from the class
    folder, and a train list's label must agree with its folder.
    """
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        relative = parts[0]
        folder = relative.split("/", 1)[0]
        if folder not in classes:
            raise ValueError(f"{path}:{number}: class folder {folder!r} is not in the class index")
        label = classes.index(folder)
        if len(parts) > 1 and int(parts[1]) - 1 != label:
            raise ValueError(f"{path}:{number}: label {parts[1]} disagrees with folder {folder!r}")
        items.append((relative, label))
    return items


def label_vocabulary(classes: list[str]) -> Vocabulary:
    """One token per class (lower-cased name), in class-index order after the special tokens."""
    return Vocabulary([c.lower() for c in classes])


class VideoFolderClips(Dataset):
    """Videos of one split list, sampled to `frames` frames evenly over each clip."""

    def __init__(
        self,
        root: Path,
        split_file: Path,
        class_index: Path,
        frames: int = 16,
        size: tuple[int, int] = (32, 48),
        max_upload_bytes: int = 512 * 1024 * 1024,
        max_pixels: int = 4096 * 4096,
        max_duration_s: float = 600.0,
    ):
        self.root, self.frames, self.size = Path(root), frames, tuple(size)
        self.classes = read_class_index(class_index)
        self.items = read_split(split_file, self.classes)
        self.vocab = label_vocabulary(self.classes)
        self.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                       "max_frames": frames, "max_duration_s": max_duration_s}  # fmt: skip
        missing = [p for p, _ in self.items if not (self.root / p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} listed videos are missing under {self.root}, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.items)

    def label(self, index: int) -> str:
        return self.classes[self.items[index][1]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        relative, label = self.items[index]
        data = (self.root / relative).read_bytes()
        clip, _ = decode_video(data, None, frames=self.frames, size=self.size, **self.limits)
        ids = torch.tensor(self.vocab.encode(self.classes[label].lower()), dtype=torch.long)
        return clip, ids
