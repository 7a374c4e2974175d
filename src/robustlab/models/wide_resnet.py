"""Wide residual networks, the standard architecture of adversarial-training benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._base import init_weights, register_model, scaled_channels


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus a shortcut.

    As in the TRADES/Madry code: when the channel count changes, the block's input is
    pre-activated once and both the residual branch and the 1x1 shortcut conv read it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """Stem conv (16 channels), three groups of ``n`` wide blocks (16k, 32k, 64k), BN-ReLU, pool, FC."""

    def __init__(
        self, depth: int, widen: int | float, num_classes: int, in_channels: int, dropout: float
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        # The TRADES code's [16, 16k, 32k, 64k]; a fractional k (Wu et al.'s WRN-34-0.5) is
        # rounded down per group, as nn.Conv2d needs integers: k = 0.5 gives [16, 8, 16, 32].
        channels = [16, *(scaled_channels(c, widen) for c in (16, 32, 64))]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        for i in range(3):
            blocks = [
                WideBasicBlock(
                    channels[i] if j == 0 else channels[i + 1],
                    channels[i + 1],
                    (1 if i == 0 else 2) if j == 0 else 1,
                    dropout,
                )
                for j in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(channels[3])
        # Adaptive pooling replaces the fixed 8x8 pool of the 32x32 original: any size >= 8 works.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        # The TRADES/Madry initialization: He-normal over fan-out for convs, BN at identity,
        # zero FC bias (the FC weight keeps PyTorch's default).
        init_weights(self, "kaiming")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.groups(self.conv1(x))
        out = self.pool(F.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


@register_model(
    "wrn",
    default_width=10,
    default_depth=34,
    depths=(16, 28, 34, 40),
    width_meaning="widen factor k (groups of 16k, 32k, 64k channels)",
    fractional_width=True,
)
def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int | float,
    depth: int | None,
    dropout: float = 0.0,
) -> nn.Module:
    """WideResNet-``depth``-``width`` of Zagoruyko & Komodakis, "Wide Residual Networks"
    (BMVC 2016), as implemented in the Madry et al. (2018) and TRADES (Zhang et al., 2019) code.

    ``n = (depth - 4) / 6`` pre-activation blocks per group. WRN-34-10 for 10 classes on 3x32x32
    images has 46,160,474 parameters. (The TRADES code also builds a ``sub_block1`` that its
    forward pass never uses; it is left out here, so the count is that of the network that runs.)

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (any size >= 8; pooling is adaptive).
        width: widen factor ``k`` (default 10); the groups have 16k, 32k, 64k channels. A
            fraction is allowed and each count rounded down: Wu et al. (2021, section 5.4)
            calibrate WAR on WRN-34-0.5, whose groups have 8, 16 and 32 channels (the stem
            keeps 16, as in the reference code).
        depth: 16, 28, 34 (default) or 40.
        dropout: dropout probability between the two convs of each block (default 0, as in
            adversarial training; the WRN paper used 0.3 for standard training).
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError("model.options.dropout", dropout, "a probability in [0, 1)")
    assert depth is not None  # create_model supplies the default depth
    return WideResNet(depth, width, num_classes, in_channels, dropout)
