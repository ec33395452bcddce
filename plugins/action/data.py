"""Action data: the procedural digit-action clips as a dataset, the vocabulary, collation, and
encoders that write a clip as MP4 / WebM / AVI / GIF bytes (examples, tests, the README).

The generator itself lives in `clips.py` (what happens, and when) and `render.py` (pixels);
the UCF-101-style loader for real videos is `ucf.py`.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmserve.plugins.action.clips import ACTIONS, CONNECTIVE, NUMBER_WORDS, ClipSpec, sample_clip
from mmserve.plugins.action.render import render_clip
from mmserve.plugins.nn.vocab import Vocabulary


def action_vocabulary() -> Vocabulary:
    """Subjects, verbs, their words and the connective; fixed, so any model can read any clip."""
    words = list(NUMBER_WORDS) + sorted({w for a in ACTIONS for w in a.split()}) + [CONNECTIVE]
    return Vocabulary(words)


def caption_grammar(vocab: Vocabulary) -> torch.Tensor | None:
    """Which token may follow which in a caption, bool [V, V] (row: the previous token), or
    None when `vocab` is not the digit-action vocabulary.

    "<subject> <verb> <word> [then <subject> <verb> <word>]...": after the start or "then" a
    subject, after a subject a verb, after a verb one of its own words ("rotates" is followed
    by "clockwise" or "anticlockwise", never "left"), after a word "then" or the end. What may
    come next depends on the previous token only, so decoding needs no extra state.
    """
    if vocab.itos != action_vocabulary().itos:
        return None
    allowed = torch.zeros(len(vocab), len(vocab), dtype=torch.bool)
    ids = vocab.stoi
    subjects = [ids[w] for w in NUMBER_WORDS]
    verbs: dict[str, list[str]] = {}
    for action in ACTIONS:
        verb, word = action.split()
        verbs.setdefault(verb, []).append(word)
    for before in (vocab.bos_id, ids[CONNECTIVE]):
        allowed[before, subjects] = True
    for subject in subjects:
        allowed[subject, [ids[v] for v in verbs]] = True
    for verb, words in verbs.items():
        allowed[ids[verb], [ids[w] for w in words]] = True
        for word in words:
            allowed[ids[word], [ids[CONNECTIVE], vocab.eos_id]] = True
    return allowed


ACTION_LABELS = tuple(a.replace(" ", "_") for a in ACTIONS)  # "moves left" -> one token "moves_left"


def action_label_vocabulary() -> Vocabulary:
    """Single-label mode (UCF-101 style): one token per action class, as `ucf.label_vocabulary`."""
    from mmserve.plugins.action.ucf import label_vocabulary

    return label_vocabulary(list(ACTION_LABELS))


def label_of(spec: ClipSpec) -> str:
    """The class token of a single-label clip: its (first) action."""
    return ACTION_LABELS[ACTIONS.index(spec.actions[0].action)]


def parse_actions(words: Sequence[str]) -> list[tuple[str, str]]:
    """[(subject, action)] of a caption's words: "seven moves left then ..." -> [("seven", "moves left"), ...].

    Malformed groups (which only an untrained model writes) are kept as they are, so they
    count as wrong rather than vanishing.
    """
    groups, current = [], []
    for word in list(words) + [CONNECTIVE]:
        if word == CONNECTIVE:
            if current:
                groups.append((current[0], " ".join(current[1:])))
            current = []
        else:
            current.append(word)
    return groups


@dataclass
class ClipBatch:
    """Padded clips: frames uint8 [B, T, 3, H, W] (zeros after each clip's end), lengths [B]."""

    frames: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> ClipBatch:
        return ClipBatch(self.frames.to(device), self.lengths.to(device))

    def __len__(self) -> int:
        return len(self.lengths)


def collate_clips(clips: Sequence[torch.Tensor]) -> ClipBatch:
    """Clips uint8 [T_i, 3, H, W] of different lengths -> a ClipBatch padded to the longest."""
    assert clips, "collate_clips needs at least one clip"
    shapes = {tuple(c.shape[1:]) for c in clips}
    assert len(shapes) == 1, f"clips must share [3, H, W], got {sorted(shapes)}"
    longest = max(c.shape[0] for c in clips)
    frames = torch.stack([F.pad(c, (0, 0, 0, 0, 0, 0, 0, longest - c.shape[0])) for c in clips])
    return ClipBatch(frames, torch.tensor([c.shape[0] for c in clips], dtype=torch.long))


class ActionClips(Dataset):
    """`count` clips of `split`; item -> (frames uint8 [T, 3, H, W], caption ids [L], spans [(s, e)]).

    `pool` > 0 (training): epoch e draws the clips of epoch e % pool and keeps their pixels in
    memory (one grey channel, ~30 KB a clip), so rendering (~12 ms a clip, as much as a
    training step's share of the CNN) is paid once per clip instead of once per epoch.
    """

    def __init__(self, split: str, count: int, vocab: Vocabulary, seed: int = 0, size: tuple[int, int] | None = None,
                 pool: int = 0, mode: str = "sequence", keep: bool = True, augment: bool = False):  # fmt: skip
        assert pool >= 0, f"pool must be >= 0, got {pool}"
        assert mode in ("sequence", "label"), f"mode must be sequence or label, got {mode!r}"
        self.split, self.count, self.vocab, self.seed, self.pool, self.mode = split, count, vocab, seed, pool, mode
        self.augment = augment
        self.keep = keep  # False: cycle `pool` clip sets but render every time (the caller keeps what it needs)
        self.size = tuple(size) if size else None
        self.epoch = 0
        self._cache: dict[tuple[int, int], torch.Tensor] = {}  # (epoch seed, index) -> uint8 [T, 1, H, W]

    def set_epoch(self, epoch: int) -> None:
        """Training draws new clips (same handwriting pool) every epoch, or cycles `pool` sets."""
        self.epoch = epoch % self.pool if self.pool else epoch

    def __len__(self) -> int:
        return self.count

    def spec(self, index: int) -> ClipSpec:
        num_actions = 1 if self.mode == "label" else None
        return sample_clip(self.split, index, self.seed, self.epoch, num_actions=num_actions, augment=self.augment)

    def caption(self, spec: ClipSpec) -> str:
        return label_of(spec) if self.mode == "label" else spec.caption

    def _render(self, spec: ClipSpec) -> torch.Tensor:
        return render_clip(spec, self.size) if self.size else render_clip(spec)

    def frames(self, index: int) -> torch.Tensor:
        return self._frames(index, self.spec(index))

    def _frames(self, index: int, spec: ClipSpec) -> torch.Tensor:
        if not self.pool or not self.keep:
            return self._render(spec)
        key = (self.epoch, index)
        if key not in self._cache:  # grey clips: one channel stored, three handed out
            self._cache[key] = self._render(spec)[:, :1].clone()
        return self._cache[key].expand(-1, 3, -1, -1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        spec = self.spec(index)
        ids = torch.tensor(self.vocab.encode(self.caption(spec)), dtype=torch.long)
        return self._frames(index, spec), ids, spec.spans


def collate_training(
    items: Sequence[tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]], pad_id: int
) -> tuple[ClipBatch, torch.Tensor, list[list[tuple[int, int]]]]:
    """(ClipBatch, captions [B, L+2] padded with pad_id, spans per clip)."""
    clips = collate_clips([frames for frames, _, _ in items])
    longest = max(len(ids) for _, ids, _ in items)
    captions = torch.full((len(items), longest), pad_id, dtype=torch.long)
    for row, (_, ids, _) in enumerate(items):
        captions[row, : len(ids)] = ids
    return clips, captions, [spans for _, _, spans in items]


# --- clips as video files -------------------------------------------------------------------

VIDEO_FORMATS = {  # name -> (container, codec, pixel format, MIME type)
    "mp4": ("mp4", "libx264", "yuv420p", "video/mp4"),
    "webm": ("webm", "libvpx-vp9", "yuv420p", "video/webm"),
    "avi": ("avi", "mpeg4", "yuv420p", "video/x-msvideo"),
    "gif": ("gif", "", "", "image/gif"),  # written with Pillow (an animated GIF)
}


def encode_video(frames: torch.Tensor | np.ndarray, fmt: str = "mp4", fps: int = 8, scale: int = 4) -> bytes:
    """uint8 frames [T, 3, H, W] -> video bytes in `fmt` (mp4 H.264, webm VP9, avi MPEG-4, gif).

    `scale` enlarges each frame (nearest) so the file looks like a real, larger video; codecs
    also want even sizes.
    """
    import av

    assert fmt in VIDEO_FORMATS, f"format must be one of {sorted(VIDEO_FORMATS)}, got {fmt!r}"
    container_name, codec, pix_fmt, _ = VIDEO_FORMATS[fmt]
    array = torch.as_tensor(frames)
    assert array.dim() == 4 and array.shape[1] == 3 and array.dtype == torch.uint8, (
        f"expected uint8 frames [T, 3, H, W], got {array.dtype} {tuple(array.shape)}"
    )
    array = array.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
    buffer = io.BytesIO()
    if fmt == "gif":
        from PIL import Image

        images = [Image.fromarray(np.ascontiguousarray(image)) for image in array]
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return buffer.getvalue()
    with av.open(buffer, mode="w", format=container_name) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = pix_fmt
        for image in array:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@dataclass
class ClipExample:
    data: bytes
    content_type: str
    caption: str
    spans: list[tuple[int, int]]
    num_frames: int
    fps: int


def make_example(index: int, split: str = "test", seed: int = 0, fmt: str = "mp4", fps: int = 8) -> ClipExample:
    """A test-split clip as video bytes with its caption and spans (tests, e2e, README, bench)."""
    spec = sample_clip(split, index, seed)
    data = encode_video(render_clip(spec), fmt, fps)
    return ClipExample(data, VIDEO_FORMATS[fmt][3], spec.caption, spec.spans, spec.num_frames, fps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write one generated action clip as a video file.")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="mp4", choices=sorted(VIDEO_FORMATS))
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    example = make_example(args.index, args.split, args.seed, args.format, args.fps)
    args.out.write_bytes(example.data)
    spans = ", ".join(f"{s / args.fps:.2f}-{(e + 1) / args.fps:.2f}s" for s, e in example.spans)
    print(f"{example.caption}  [{spans}]  ({example.num_frames} frames at {args.fps} fps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
