"""The CIFAR ResNets of He et al. (2016), with batch norm or with Fixup initialization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._base import register_model


def _shortcut_a(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
    """Option-A shortcut: subsample spatially and zero-pad the new channels (no parameters)."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = planes - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
    return x


class _ScalarBias(nn.Module):
    """Adds one learned scalar (Fixup's stand-in for the BN shift)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, added to the option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + _shortcut_a(x, self.planes, self.stride))


class FixupBlock(nn.Module):
    """The basic block without BN: scalar biases before each conv and activation, and a scalar
    multiplier on the branch (Zhang et al., 2019, rule 3). The shortcut reads the raw input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        return F.relu(out + _shortcut_a(x, self.planes, self.stride))


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``n`` basic blocks (w, 2w, 4w channels), pool, FC."""

    def __init__(
        self, depth: int, width: int, num_classes: int, in_channels: int, batchnorm: bool
    ) -> None:
        super().__init__()
        n = (depth - 2) // 6
        block = BasicBlock if batchnorm else FixupBlock
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        # Without BN the stem's normalization becomes Fixup's scalar bias before the ReLU.
        self.stem_norm: nn.Module = nn.BatchNorm2d(width) if batchnorm else _ScalarBias()
        stages: list[nn.Module] = []
        in_planes = width
        for i in range(3):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_bias: nn.Module = nn.Identity() if batchnorm else _ScalarBias()
        self.fc = nn.Linear(in_planes, num_classes)
        if batchnorm:
            # He et al.'s initialization, as in the widely used akamaster/pytorch_resnet_cifar10.
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)
        else:
            self._fixup_init(num_branches=3 * n)

    def _fixup_init(self, num_branches: int) -> None:
        # Fixup rules 1 and 2: with L branches of m = 2 layers, zero the last conv of each branch
        # and scale the He init of the other by L^(-1/(2m-2)) = L^(-1/2), so every branch starts
        # as the zero function and the SGD update to the output stays bounded at any depth.
        for m in self.modules():
            if isinstance(m, FixupBlock):
                fan_out = m.conv1.weight.shape[0] * m.conv1.weight[0, 0].numel()
                std = (2.0 / fan_out) ** 0.5 * num_branches**-0.5
                nn.init.normal_(m.conv1.weight, 0.0, std)
                nn.init.zeros_(m.conv2.weight)
        # Fixup rule 1 also zeroes the classification layer.
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.stem_norm(self.conv1(x)))
        out = self.pool(self.stages(out))
        return self.fc(self.fc_bias(torch.flatten(out, 1)))


@register_model(
    "resnet_cifar",
    default_width=16,
    default_depth=20,
    depths=(20, 32, 44, 56, 110),
    width_meaning="base channels w (stages w, 2w, 4w)",
)
def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int,
    depth: int | None,
    batchnorm: bool = True,
) -> nn.Module:
    """ResNet-``depth`` for CIFAR of He et al., "Deep Residual Learning for Image Recognition"
    (CVPR 2016), Section 4.2: ``n = (depth - 2) / 6`` basic blocks per stage, option-A
    (parameter-free, zero-padding) shortcuts. ResNet-56 with ``width=16`` and 10 classes has
    853,018 parameters.

    With ``batchnorm=False`` the network has no normalization layers and uses Fixup
    initialization (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
    Normalization", ICLR 2019): scalar biases before each conv, activation and the FC layer, a
    scalar multiplier per residual branch, the last conv of each branch and the FC layer
    zero-initialized, the other branch convs scaled by ``L^(-1/2)`` for ``L`` branches.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (any size >= 8; pooling is adaptive).
        width: base channels ``w`` (default 16); the stages have w, 2w, 4w channels.
        depth: 20 (default), 32, 44, 56 or 110.
        batchnorm: use batch normalization (default); ``False`` for Fixup.
    """
    if not isinstance(batchnorm, bool):
        raise ConfigError("model.options.batchnorm", batchnorm, "true or false")
    assert depth is not None  # create_model supplies the default depth
    return CifarResNet(depth, width, num_classes, in_channels, batchnorm)
