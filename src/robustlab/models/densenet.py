"""DenseNet-BC: densely connected blocks with bottlenecks and compression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import init_weights, register_model


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4k channels), BN-ReLU-conv3x3 (k channels); the k new feature maps
    are concatenated to the input."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to ``out_planes`` (the compression), then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(nn.Module):
    """Stem conv (2k channels), three dense blocks joined by transitions, BN-ReLU, pool, FC."""

    def __init__(
        self, depth: int, growth: int, num_classes: int, in_channels: int, compression: float = 0.5
    ) -> None:
        super().__init__()
        # Each bottleneck layer holds two convs; the stem conv, two transitions and the FC
        # layer make up the remaining 4 of ``depth``.
        n = (depth - 4) // 6
        planes = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)]
        for i in range(3):
            for _ in range(n):
                layers.append(Bottleneck(planes, growth))
                planes += growth
            if i < 2:
                out_planes = int(planes * compression)
                layers.append(Transition(planes, out_planes))
                planes = out_planes
        layers += [nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(planes, num_classes)
        # The initialization of the reference Torch code: He-normal over fan-out for convs,
        # BN at identity, zero FC bias.
        init_weights(self, "kaiming")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@register_model(
    "densenet_bc",
    default_width=12,
    default_depth=40,
    depths=(22, 40, 100, 190, 250),
    width_meaning="growth rate k (new feature maps per layer)",
)
def build(
    num_classes: int, in_channels: int, image_size: int, *, width: int, depth: int | None
) -> nn.Module:
    """DenseNet-BC of Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017):
    three dense blocks of ``n = (depth - 4) / 6`` bottleneck layers, compression 0.5.

    DenseNet-BC-40 with ``k = 12`` for 10 classes on 3x32x32 images has about 0.176M
    parameters; the paper's configurations are (100, 12), (250, 24) and (190, 40).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (any size >= 8; pooling is adaptive).
        width: growth rate ``k`` (default 12).
        depth: 22, 40 (default), 100, 190 or 250.
    """
    assert depth is not None  # create_model supplies the default depth
    return DenseNetBC(depth, width, num_classes, in_channels)
