"""The small convolutional trunk the image and video plugins share: a 3x3 stem, then stages of
torchvision `BasicBlock`s (only a stage's first block may downsample)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock


def basic_trunk(
    stem_width: int,
    stage_widths: Sequence[int],
    stage_strides: Sequence[int],
    blocks_per_stage: int = 1,
    stem_stride: int = 2,
    in_channels: int = 3,
) -> tuple[nn.Sequential, int]:
    """(images [N, in_channels, H, W] -> grid [N, C, h, w], C).

    Layers in order: stem conv, batch norm, ReLU, then the blocks, so state-dict keys are
    `<name>.0.weight` (stem) and `<name>.3.conv1.weight` (first block) onwards.
    """
    assert len(stage_strides) == len(stage_widths), f"one stride per stage: {stage_strides} for {stage_widths}"
    assert blocks_per_stage >= 1, f"blocks_per_stage must be >= 1, got {blocks_per_stage}"
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, stem_width, 3, stride=stem_stride, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
    ]
    width = stem_width
    for out, stage_stride in zip(stage_widths, stage_strides):
        for b in range(blocks_per_stage):
            stride = stage_stride if b == 0 else 1
            downsample = None
            if stride != 1 or width != out:
                downsample = nn.Sequential(nn.Conv2d(width, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            layers.append(BasicBlock(width, out, stride=stride, downsample=downsample))
            width = out
    return nn.Sequential(*layers), width
