"""Show, Attend and Tell (Xu et al. 2015): a ResNet trunk gives a grid of region features,
and the shared attention LSTM decoder describes the image word by word, attending to regions.

Configuration and modules only; no file or network I/O (artifacts live in checkpoint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.heads import CategoricalHead
from mmserve.plugins.nn.trunk import basic_trunk
from mmserve.plugins.nn.vocab import Vocabulary

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    image_size: tuple[int, int] = (48, 112)  # (H, W) every input is resized to
    trunk: str = "basic"  # "basic": our own BasicBlock stages | "resnet18": torchvision's, truncated
    stem_width: int = 32  # basic: channels of the stride-2 3x3 stem
    stage_widths: tuple[int, ...] = (32, 64)  # basic: channels of each stage
    stage_strides: tuple[int, ...] = ()  # basic: stride of each stage's first block (empty: all 2)
    blocks_per_stage: int = 1  # basic
    resnet18_layers: int = 2  # resnet18: keep layer1..layerK (grid stride 4 * 2**(K-1))
    pretrained: bool = False  # resnet18: start from torchvision's ImageNet weights (must be cached)
    memory_dim: int = 128  # D of the region features the decoder attends over
    positional: bool = True  # add a learned embedding per grid cell (lets words like "above" see position)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # input normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        # JSON round-trips tuples as lists; keep them tuples so configs compare equal.
        self.image_size = tuple(int(v) for v in self.image_size)
        self.stage_widths = tuple(int(v) for v in self.stage_widths)
        self.stage_strides = tuple(int(v) for v in self.stage_strides) or (2,) * len(self.stage_widths)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        assert self.trunk in ("basic", "resnet18"), f"trunk must be 'basic' or 'resnet18', got {self.trunk!r}"
        assert len(self.image_size) == 2, f"image_size is (H, W), got {self.image_size}"
        assert 1 <= self.resnet18_layers <= 4, f"resnet18 has layers 1-4, got {self.resnet18_layers}"
        assert self.trunk == "resnet18" or len(self.stage_widths) >= 1, "the basic trunk needs at least one stage"
        assert len(self.stage_strides) == len(self.stage_widths), (
            f"stage_strides {self.stage_strides} needs one stride per stage of {self.stage_widths}"
        )
        assert all(s in (1, 2) for s in self.stage_strides), f"stage strides must be 1 or 2, got {self.stage_strides}"


@dataclass
class CaptionerConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig | None = None  # vocab_size / memory_dim filled in by Captioner

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": asdict(self.encoder), "decoder": self.decoder.to_dict() if self.decoder else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        decoder = DecoderConfig(**data["decoder"]) if data.get("decoder") else None
        return cls(encoder=EncoderConfig(**data["encoder"]), decoder=decoder)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ResNetTrunk(nn.Module):
    """images [B, 3, H, W] -> feature grid [B, C, h, w]."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        if c.trunk == "resnet18":
            self.body, self.out_channels = self._resnet18(c)
        else:
            self.body, self.out_channels = basic_trunk(c.stem_width, c.stage_widths, c.stage_strides, c.blocks_per_stage)

    @staticmethod
    def _resnet18(c: EncoderConfig) -> tuple[nn.Module, int]:
        from torchvision.models import ResNet18_Weights, resnet18

        # Weights come from torchvision's cache; users without them keep pretrained=False
        # (artifact loading always does, since the artifact holds every weight anyway).
        net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if c.pretrained else None)
        keep = [net.conv1, net.bn1, net.relu, net.maxpool]
        keep += [getattr(net, f"layer{i}") for i in range(1, c.resnet18_layers + 1)]
        return nn.Sequential(*keep), 64 * 2 ** (c.resnet18_layers - 1)

    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the feature grid for the configured image size, computed from the strides."""
        out = []
        for size in self.config.image_size:
            if self.config.trunk == "resnet18":
                size = _conv_out(_conv_out(size, 7, 2, 3), 3, 2, 1)  # conv1, maxpool
                for _ in range(self.config.resnet18_layers - 1):  # layer2.. halve
                    size = _conv_out(size, 3, 2, 1)
            else:
                size = _conv_out(size, 3, 2, 1)  # stem
                for stride in self.config.stage_strides:
                    size = _conv_out(size, 3, stride, 1)
            out.append(size)
        return out[0], out[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class ImageEncoder(nn.Module):
    """images [B, 3, H, W] -> region features [B, N = h*w, D]."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.trunk = ResNetTrunk(config)
        self.grid_size = self.trunk.grid_size()
        h, w = self.grid_size
        assert h >= 1 and w >= 1, f"image_size {config.image_size} is too small for this trunk"
        self.project = nn.Linear(self.trunk.out_channels, config.memory_dim)
        self.position = nn.Parameter(torch.zeros(h * w, config.memory_dim)) if config.positional else None
        if self.position is not None:
            nn.init.normal_(self.position, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, *self.config.image_size)
        assert images.dim() == 4 and tuple(images.shape[1:]) == expected, (
            f"expected images [B, {', '.join(map(str, expected))}], got {tuple(images.shape)}"
        )
        grid = self.trunk(images)  # [B, C, h, w]
        assert tuple(grid.shape[2:]) == self.grid_size, f"grid {tuple(grid.shape[2:])} != {self.grid_size}"
        regions = grid.flatten(2).transpose(1, 2)  # [B, N, C], row-major over the grid
        values = self.project(regions)  # [B, N, D]
        if self.position is not None:
            values = values + self.position  # [N, D] broadcast over B
        return values


class Captioner(EncoderDecoder):
    """Show, Attend and Tell: ImageEncoder + the shared AttentionDecoder (LSTM, Bahdanau, beta gate)."""

    def __init__(self, config: CaptionerConfig, vocab: Vocabulary):
        super().__init__()
        decoder = config.decoder or DecoderConfig(vocab_size=len(vocab), memory_dim=config.encoder.memory_dim)
        assert decoder.vocab_size == len(vocab), f"decoder vocab_size {decoder.vocab_size} != vocabulary {len(vocab)}"
        assert decoder.memory_dim == config.encoder.memory_dim, "decoder memory_dim must equal encoder memory_dim"
        assert decoder.output_kind == "categorical", "captions are token ids: output_kind must be categorical"
        self.config = CaptionerConfig(encoder=config.encoder, decoder=decoder)
        self.vocab = vocab
        self.bos_id, self.eos_id, self.pad_id = vocab.bos_id, vocab.eos_id, vocab.pad_id
        self.head = CategoricalHead(vocab.bos_id, vocab.eos_id)
        self.encoder = ImageEncoder(config.encoder)
        self.decoder = AttentionDecoder(decoder)
        self.grid_size: tuple[int, int] = self.encoder.grid_size

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.encoder.image_size

    def readable_tokens(self, tokens: list[int]) -> tuple[list[str], list[int]]:
        """Words of a decoded sequence and the positions they came from.

        Unlike `vocab.decode`, positions are kept so words stay aligned with the per-step
        attention rows; <pad>/<bos> (which only an untrained model emits) carry no text.
        """
        skip = (self.vocab.pad_id, self.vocab.bos_id)
        kept = [i for i, token in enumerate(tokens) if token not in skip]
        return [self.vocab.itos[tokens[i]] for i in kept], kept

    def encode(self, batch: torch.Tensor) -> Memory:
        values = self.encoder(batch)  # [B, N, D]
        mask = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)  # every region is real
        return self.decoder.prepare_memory(values, mask)

    def init_state(self, memory: Memory) -> State:
        return self.decoder.init_state(memory)

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        return self.decoder.step(prev, state, memory)

    def forward(self, images: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: images [B, 3, H, W], inputs [B, T] -> logits [B, T, V], attention [B, T, N]."""
        return self.decoder.forward_teacher(self.encode(images), inputs)


def caption_loss(
    logits: torch.Tensor, targets: torch.Tensor, attention: torch.Tensor, pad_id: int, penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over real tokens plus Show-Attend-Tell's doubly stochastic attention term.

    logits [B, T, V], targets [B, T], attention [B, T, N]. The penalty
    lambda * sum_i (1 - sum_t alpha_ti)^2 (summed over regions i, averaged over the batch)
    nudges the decoder to look at every region over the whole caption instead of staring at
    one. Returns (total loss, cross-entropy) so callers can log the plain likelihood too.
    """
    assert logits.shape[:2] == targets.shape == attention.shape[:2], (
        f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, attention {tuple(attention.shape)}"
    )
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id)
    if penalty <= 0:
        return ce, ce
    real = (targets != pad_id).unsqueeze(-1).to(attention.dtype)  # [B, T, 1]: padded steps attend to nothing
    coverage = (attention * real).sum(dim=1)  # [B, N]
    doubly_stochastic = ((1.0 - coverage) ** 2).sum(dim=1).mean()
    return ce + penalty * doubly_stochastic, ce
