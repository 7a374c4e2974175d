"""Pre-activation ResNet-18, the architecture of the robust-overfitting experiments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut (a 1x1 conv when the shape changes) takes the
    pre-activated input, as in He et al. (2016b) and Rice et al.'s code."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv, four stages of pre-activation blocks (widths w, 2w, 4w, 8w), BN-ReLU, pool, FC."""

    def __init__(
        self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int, width: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for stride in strides:
                blocks.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        # Adaptive pooling replaces the fixed 4x4 pool of the 32x32 original: any size >= 8 works.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = self.pool(F.relu(self.bn(out)))
        return self.linear(torch.flatten(out, 1))


@register_model(
    "preact_resnet18", default_width=64, width_meaning="base channels w (stages w, 2w, 4w, 8w)"
)
def build(
    num_classes: int, in_channels: int, image_size: int, *, width: int, depth: int | None
) -> nn.Module:
    """PreActResNet-18 of He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016),
    as used by Rice et al., "Overfitting in Adversarially Robust Deep Learning" (ICML 2020).

    Four stages of two pre-activation basic blocks, then BN-ReLU before pooling. With
    ``width=64`` and 10 classes on 3x32x32 images it has 11,172,170 parameters (11.17M); the
    often-quoted 11,171,146 is the kuangliu/pytorch-cifar variant, which lacks that final BN
    (1,024 parameters). PyTorch's default initialization, as in Rice et al.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (any size >= 8; pooling is adaptive).
        width: base channels ``w`` (default 64); the stages have w, 2w, 4w, 8w channels.
        depth: unused (fixed depth 18); always ``None``.
    """
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width)
