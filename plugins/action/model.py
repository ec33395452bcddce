"""Action recognition as captioning over time: a per-frame CNN, a bidirectional GRU/LSTM over
the frame features, and the shared attention decoder naming each action in order.

The decoder's attention is over frames, so the frames it reads while writing an action's words
say *when* that action happens (`spans.py` turns attention into time spans). The same model
serves single-label datasets (UCF-101 style, `mode="label"`): the decoder then writes one
class token.

Configuration and modules only; no file or network I/O (artifacts live in checkpoint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmserve.plugins.action.data import ClipBatch, caption_grammar, collate_clips
from mmserve.plugins.nn.birnn import bidirectional_rnn
from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.heads import CategoricalHead
from mmserve.plugins.nn.trunk import basic_trunk
from mmserve.plugins.nn.vocab import Vocabulary

TEMPORAL = ("bigru", "bilstm", "none")
INPUTS = ("pixels", "motion")
SUBJECT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class ClipEncoderConfig:
    frame_size: tuple[int, int] = (32, 48)  # (H, W) every frame is resized to
    stem_width: int = 16  # channels of the 3x3 stem
    # 2 halves the frame before any block (cheap, but a 12-14 px digit is then 6-7 px wide);
    # 1 keeps full resolution for the first stage. Artifacts without the key were stride 2.
    stem_stride: int = 2
    stage_widths: tuple[int, ...] = (32, 64)  # BasicBlock stages
    stage_strides: tuple[int, ...] = (2, 2)
    blocks_per_stage: int = 1
    frame_dim: int = 128  # per-frame feature (from the flattened grid: position survives)
    # Also max-pool the grid to this coarse grid: features that say *what* is in each part of
    # the frame whatever its exact place (the flattened grid alone must learn every digit at
    # every position separately, which was far slower to train). (0, 0): off.
    pool_grid: tuple[int, int] = (2, 3)
    temporal: str = "bigru"  # bigru | bilstm | none (the mean-pooled-frames baseline)
    temporal_hidden: int = 64  # per direction
    temporal_layers: int = 1
    mean: float = 0.5  # input normalisation of 0..1 pixels
    std: float = 0.5
    # What the CNN sees of a frame. "pixels": its (grey) RGB channels. "motion": its grey level
    # plus its differences to the previous and the next frame, so a move, turn, zoom or fade is
    # in the input itself instead of being inferred from features of separate frames (the
    # frames are grey: the three equal channels carried nothing more). Artifacts without the
    # key are "pixels".
    input: str = "pixels"
    # Vertical strips of the frame that are separate memory positions: the memory is then
    # [T * regions] (frame t's strip r at t * regions + r), each strip with its own feature
    # projection and the temporal RNN shared. With two digits, one per half, the decoder's
    # attention lands on the strip where the action happens and reads *that* digit there:
    # naming the right one of two is binding what moves to what it is, which one feature
    # vector per frame left to be learnt. 1: one position per frame (artifacts without the key).
    regions: int = 1
    # The pace the model was trained at: requests are sampled at this many frames per second
    # unless they ask otherwise, and at most `default_frames` frames.
    default_fps: float = 8.0
    default_frames: int = 24

    def __post_init__(self) -> None:
        self.frame_size = tuple(int(v) for v in self.frame_size)
        self.pool_grid = tuple(int(v) for v in self.pool_grid)
        self.stage_widths = tuple(int(v) for v in self.stage_widths)
        self.stage_strides = tuple(int(v) for v in self.stage_strides) or (2,) * len(self.stage_widths)
        assert self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {self.stem_stride}"
        assert self.temporal in TEMPORAL, f"temporal must be one of {TEMPORAL}, got {self.temporal!r}"
        assert self.input in INPUTS, f"input must be one of {INPUTS}, got {self.input!r}"
        assert self.regions >= 1, f"regions must be >= 1, got {self.regions}"
        assert len(self.stage_strides) == len(self.stage_widths), "one stride per stage"
        assert all(s in (1, 2) for s in self.stage_strides), f"stage strides must be 1 or 2, got {self.stage_strides}"

    @property
    def memory_dim(self) -> int:
        return self.frame_dim if self.temporal == "none" else 2 * self.temporal_hidden


@dataclass
class ActionConfig:
    encoder: ClipEncoderConfig = field(default_factory=ClipEncoderConfig)
    decoder: DecoderConfig | None = None  # vocab_size / memory_dim filled in by ActionRecognizer
    mode: str = "sequence"  # sequence: "seven moves left then ..." | label: one class token
    presence_head: bool = False  # the training-only subject-presence head (see ActionRecognizer)

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": asdict(self.encoder), "decoder": self.decoder.to_dict() if self.decoder else None,
                "mode": self.mode, "presence_head": self.presence_head}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionConfig:
        decoder = DecoderConfig(**data["decoder"]) if data.get("decoder") else None
        return cls(encoder=ClipEncoderConfig(**data["encoder"]), decoder=decoder, mode=data.get("mode", "sequence"),
                   presence_head=bool(data.get("presence_head", False)))  # fmt: skip


def clip_input(frames: torch.Tensor, lengths: torch.Tensor, c: ClipEncoderConfig) -> torch.Tensor:
    """uint8 frames [B, T, 3, H, W] with real lengths [B] -> the CNN's float input [B, T, 3, H, W].

    "motion": channels (grey, grey - previous frame, next frame - grey), normalised; the
    differences are zero at each clip's first and last real frame, so padding never leaks in
    and a clip gives the same input alone or in a batch.
    """
    pixels = frames.float().div_(255.0).sub_(c.mean).div_(c.std)
    if c.input == "pixels":
        return pixels
    grey = pixels[:, :, 0]  # [B, T, H, W]
    steps = frames.shape[1]
    index = torch.arange(steps, device=frames.device).unsqueeze(0)  # [1, T]
    last = (lengths.to(frames.device) - 1).clamp_min(0).unsqueeze(1)  # [B, 1]
    previous = (index - 1).clamp_min(0).expand(frames.shape[0], -1)
    following = torch.minimum(index + 1, last).expand(frames.shape[0], -1)
    gather = lambda at: grey.gather(1, at[:, :, None, None].expand_as(grey))  # noqa: E731
    return torch.stack([grey, grey - gather(previous), gather(following) - grey], dim=2)


class FrameCNN(nn.Module):
    """frames [N, 3, H, W] (normalised) -> features [N, frame_dim] from the flattened grid, or
    [N, regions, frame_dim] (one per vertical strip of the grid) when `regions` > 1."""

    def __init__(self, c: ClipEncoderConfig):
        super().__init__()
        self.body, width = basic_trunk(c.stem_width, c.stage_widths, c.stage_strides, c.blocks_per_stage, c.stem_stride)
        self.channels = width  # of the grid the body returns
        h, w = c.frame_size
        for stride in (c.stem_stride, *c.stage_strides):  # 3x3 convs, padding 1
            h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        self.grid = (h, w)
        self.regions = c.regions
        assert w % c.regions == 0, f"the grid's {w} columns do not split into {c.regions} regions"
        # The flattened grid keeps *where* ("moves left" is a change of place, which pooling
        # erases); the max-pooled coarse grid says *what*, wherever it is.
        self.pool = nn.AdaptiveMaxPool2d(c.pool_grid) if all(c.pool_grid) else None
        pooled = width * c.pool_grid[0] * c.pool_grid[1] if self.pool is not None else 0
        features = width * h * (w // c.regions) + pooled
        if c.regions == 1:
            self.project = nn.Sequential(nn.Linear(features, c.frame_dim), nn.ReLU(inplace=True))
        else:  # each strip its own projection: where a digit sits within its strip still counts
            self.region_project = nn.ModuleList(
                nn.Sequential(nn.Linear(features, c.frame_dim), nn.ReLU(inplace=True)) for _ in range(c.regions)
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.from_grid(self.body(frames))

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The trunk's grid [N, C, h, w] -> frame features [N, frame_dim] (or [N, R, frame_dim])."""
        if self.regions == 1:
            return self.project(self._describe(grid))  # [N, frame_dim]
        strips = grid.chunk(self.regions, dim=3)  # R x [N, C, h, w / R]
        return torch.stack([project(self._describe(strip)) for project, strip in zip(self.region_project, strips)], dim=1)

    def _describe(self, grid: torch.Tensor) -> torch.Tensor:
        parts = [grid.flatten(1)] + ([self.pool(grid).flatten(1)] if self.pool is not None else [])
        return torch.cat(parts, dim=1)


class ClipEncoder(nn.Module):
    """ClipBatch (uint8 frames [B, T, 3, H, W], lengths [B]) -> memory values [B, N, D], mask [B, N].

    N = T with a temporal RNN (one memory position per frame); N = 1 for `temporal="none"`
    (the mean of the real frames' features: the no-temporal-encoder baseline).
    """

    def __init__(self, c: ClipEncoderConfig):
        super().__init__()
        self.config = c
        self.cnn = FrameCNN(c)
        rnn = {"bigru": nn.GRU, "bilstm": nn.LSTM}.get(c.temporal)
        self.rnn = None
        if rnn is not None:
            self.rnn = rnn(c.frame_dim, c.temporal_hidden, num_layers=c.temporal_layers, batch_first=True,
                           bidirectional=True)  # fmt: skip

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, torch.Tensor]:
        features, mask = self.frame_features(batch)
        return self.temporal(features, mask, batch.lengths)

    def frame_features(self, batch: ClipBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame CNN features [B, T, F] or [B, T, R, F] (zeros on padding) and the mask [B, T]."""
        frames, lengths = batch.frames, batch.lengths
        c = self.config
        assert frames.dim() == 5 and tuple(frames.shape[2:]) == (3, *c.frame_size), (
            f"expected frames [B, T, 3, {c.frame_size[0]}, {c.frame_size[1]}], got {tuple(frames.shape)}"
        )
        assert lengths.shape == frames.shape[:1], f"lengths {tuple(lengths.shape)} for {frames.shape[0]} clips"
        assert bool((lengths >= 1).all()) and int(lengths.max()) <= frames.shape[1], f"bad lengths {lengths.tolist()}"
        batch_size, steps = frames.shape[:2]
        mask = torch.arange(steps, device=frames.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        real = clip_input(frames, lengths, c)[mask]  # only real frames reach the CNN
        per_frame = self.cnn(real)  # [N_real, F] or [N_real, R, F]
        features = per_frame.new_zeros(batch_size, steps, *per_frame.shape[1:])
        features[mask] = per_frame
        return features, mask

    def temporal(self, features: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features [B, T, F] (or [B, T, R, F]) -> memory values [B, N, D] and mask [B, N],
        N = T (or T * R, frame-major)."""
        batch_size, steps = mask.shape
        regions = features.shape[2] if features.dim() == 4 else 1
        if regions > 1:  # every strip is a sequence of its own through the shared RNN
            features = features.transpose(1, 2).reshape(batch_size * regions, steps, -1)  # [B*R, T, F]
            lengths, mask = lengths.repeat_interleave(regions), mask.repeat_interleave(regions, dim=0)
        if self.rnn is None:
            weights = mask.unsqueeze(-1).to(features.dtype)
            values = (features * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)  # [B*R, 1, F]
            mask = mask.new_ones(mask.shape[0], 1)
        else:
            # The backward direction starts at each clip's own last frame, so a clip encodes the
            # same alone or padded in a batch.
            values = bidirectional_rnn(self.rnn, features, lengths)  # [B*R, T, 2H]
        if regions == 1:
            return values, mask
        positions = values.shape[1]
        values = values.view(batch_size, regions, positions, -1).transpose(1, 2).reshape(batch_size, positions * regions, -1)
        return values, mask.view(batch_size, regions, positions).transpose(1, 2).reshape(batch_size, positions * regions)


class ActionRecognizer(EncoderDecoder):
    """ClipEncoder + the shared AttentionDecoder; attention runs over frames."""

    output_kind = "categorical"

    def __init__(self, config: ActionConfig, vocab: Vocabulary):
        super().__init__()
        memory_dim = config.encoder.memory_dim
        decoder = config.decoder or DecoderConfig(vocab_size=len(vocab), memory_dim=memory_dim)
        assert decoder.vocab_size == len(vocab), f"decoder vocab_size {decoder.vocab_size} != vocabulary {len(vocab)}"
        assert decoder.memory_dim == memory_dim, f"decoder memory_dim {decoder.memory_dim} != encoder's {memory_dim}"
        assert decoder.output_kind == "categorical", "actions are token ids: output_kind must be categorical"
        assert config.mode in ("sequence", "label"), f"mode must be sequence or label, got {config.mode!r}"
        self.config = ActionConfig(encoder=config.encoder, decoder=decoder, mode=config.mode,
                                   presence_head=config.presence_head)  # fmt: skip
        self.vocab = vocab
        self.bos_id, self.eos_id, self.pad_id = vocab.bos_id, vocab.eos_id, vocab.pad_id
        self.head = CategoricalHead(self.bos_id, self.eos_id)
        self.encoder = ClipEncoder(config.encoder)
        self.decoder = AttentionDecoder(decoder)
        # Training-only auxiliary head: which subjects appear in the clip, from the frame
        # features max-pooled over time. It hands the CNN a direct "what digit is this" signal;
        # through the BiGRU and attention alone the first runs learned no digit identity.
        self.subjects = [i for i, w in enumerate(vocab.itos) if w in SUBJECT_WORDS]
        use = config.presence_head and bool(self.subjects)
        self.presence = nn.Linear(config.encoder.frame_dim, len(self.subjects)) if use else None
        # Decoding writes only captions of the form "<subject> <verb> <word> [then ...]"; the
        # table is derived from the vocabulary, not learned, so it is no part of the weights.
        grammar = caption_grammar(vocab) if config.mode == "sequence" else None
        self.register_buffer("grammar", grammar, persistent=False)
        self.constrained = True  # False: the decoder's unconstrained choice (evaluation of the effect)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.encoder.frame_size

    @property
    def regions(self) -> int:
        return self.config.encoder.regions

    @property
    def pooled(self) -> bool:
        """True for the no-temporal-encoder baseline: one memory position stands for every frame."""
        return self.config.encoder.temporal == "none"

    def collate(self, items: list[torch.Tensor]) -> ClipBatch:  # type: ignore[override]
        return collate_clips(items)

    def encode(self, batch: ClipBatch) -> Memory:  # type: ignore[override]
        values, mask = self.encoder(batch)
        return self.decoder.prepare_memory(values, mask)

    def init_state(self, memory: Memory) -> State:
        return self.decoder.init_state(memory)

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        logits, state, attention = self.decoder.step(prev, state, memory)
        if self.grammar is not None and self.constrained:  # only well-formed captions
            logits = logits.masked_fill(~self.grammar[prev], float("-inf"))
        return logits, state, attention

    def forward(self, batch: ClipBatch, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs [B, L] -> logits [B, L, V], attention [B, L, N]."""
        return self.decoder.forward_teacher(self.encode(batch), inputs)

    def forward_train(
        self, batch: ClipBatch, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher forcing plus the presence logits [B, S] (None without subject words)."""
        features, mask = self.encoder.frame_features(batch)
        return self.forward_train_features(features, mask, batch.lengths, inputs)

    def forward_train_grids(
        self, grids: torch.Tensor, lengths: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """forward_train from the trunk's grids [B, T, C, h, w] (a fixed, cached trunk; zeros on padding)."""
        batch_size, steps = grids.shape[:2]
        mask = torch.arange(steps, device=grids.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        real = self.encoder.cnn.from_grid(grids[mask].float())  # [N_real, F] or [N_real, R, F]
        features = real.new_zeros(batch_size, steps, *real.shape[1:])
        features[mask] = real
        return self.forward_train_features(features, mask, lengths, inputs)

    def forward_train_features(
        self, features: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Frame features [B, T, F] and mask [B, T] -> logits, attention, presence logits."""
        values, memory_mask = self.encoder.temporal(features, mask, lengths)
        logits, attention = self.decoder.forward_teacher(self.decoder.prepare_memory(values, memory_mask), inputs)
        presence = None
        if self.presence is not None:
            every = features if features.dim() == 4 else features.unsqueeze(2)  # [B, T, R, F]
            pooled = every.masked_fill(~mask[:, :, None, None], float("-inf")).amax(dim=(1, 2))  # [B, F]
            presence = self.presence(pooled)
        return logits, attention, presence

    def presence_targets(self, captions: torch.Tensor) -> torch.Tensor:
        """Multi-hot [B, S] of the subject words in captions [B, L]."""
        ids = torch.tensor(self.subjects, device=captions.device)
        return (captions.unsqueeze(-1) == ids).any(dim=1).float()

    def frame_attention(self, attention: torch.Tensor, length: int) -> torch.Tensor:
        """Attention rows [L, N] of one clip -> weights over its frames [L, length] (a frame's
        regions summed)."""
        if self.pooled:  # the single position is every frame alike
            return attention.sum(-1, keepdim=True).expand(-1, length) / length
        return self.frames_of(attention[..., : length * self.regions])

    def frames_of(self, attention: torch.Tensor) -> torch.Tensor:
        """Attention [..., T * R] over memory positions -> [..., T] over frames."""
        if self.regions == 1 or self.pooled:
            return attention
        return attention.unflatten(-1, (-1, self.regions)).sum(-1)


def action_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    attention: torch.Tensor,
    pad_id: int,
    spans: list[list[tuple[int, int]]] | None,
    weight: float,
    words_per_action: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over real tokens plus supervised attention on the true spans.

    logits [B, L, V], targets [B, L], attention [B, L, N]. Target k*4 + {0,1,2} are action k's
    subject, verb and word ("then" follows): their attention rows are pulled towards a uniform
    distribution over the action's true frames [start, end] (cross-entropy against it), which
    is what makes the attention a usable "when". `weight` 0 or no spans: plain cross-entropy.
    Returns (total loss, cross-entropy).
    """
    assert logits.shape[:2] == targets.shape == attention.shape[:2], (
        f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, attention {tuple(attention.shape)}"
    )
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)
    if not spans or weight <= 0 or attention.shape[-1] == 1:  # a pooled memory has nothing to localise
        return ce, ce
    wanted = torch.zeros_like(attention)  # [B, L, N]
    for row, clip_spans in enumerate(spans):
        for k, (start, end) in enumerate(clip_spans):
            for offset in range(words_per_action - 1):
                step = k * words_per_action + offset
                if step < wanted.shape[1]:
                    wanted[row, step, start : end + 1] = 1.0 / (end - start + 1)
    supervised = wanted.sum(-1) > 0  # [B, L]
    if not bool(supervised.any()):
        return ce, ce
    align = -(wanted * torch.log(attention.clamp_min(1e-8))).sum(-1)[supervised].mean()
    return ce + weight * align, ce
