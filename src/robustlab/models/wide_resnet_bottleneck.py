"""Bottleneck wide residual networks (WRN-50-2), the Tiny-ImageNet model of Wen et al. (2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._base import CONV_INITS, init_weights, register_model, scaled_channels

# Bottleneck units per group (He et al. 2016, Table 1), by depth.
_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # a unit's output has 4x the channels of its group's base ``planes``
STEMS = ("small", "imagenet")
INITS = tuple(CONV_INITS)


class Bottleneck(nn.Module):
    """conv1x1 -> conv3x3 (stride here, "ResNet v1.5" as torchvision) -> conv1x1 (4 x planes),
    each followed by BN, ReLU after the first two and after the sum with the shortcut."""

    def __init__(self, in_planes: int, planes: int, inner: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class BottleneckWideResNet(nn.Module):
    """Stem, four groups of bottleneck units (planes b, 2b, 4b, 8b; inner 3x3 width k x planes;
    outputs 4 x planes), global average pooling, FC."""

    def __init__(
        self,
        units: tuple[int, ...],
        widen: int | float,
        num_classes: int,
        in_channels: int,
        base: int,
        stem: str,
        init: str,
    ) -> None:
        super().__init__()
        if stem == "imagenet":  # torchvision: 7x7 stride 2, then a 3x3 stride-2 max-pool
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(base),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:  # Wen et al. App. D.2: 3x3 stride 1, no max-pool, for 56 x 56 inputs
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(base),
                nn.ReLU(inplace=True),
            )
        groups: list[nn.Module] = []
        in_planes = base
        for i, count in enumerate(units):
            planes = base * 2**i
            # torchvision: width = int(planes * (width_per_group / 64)); widen = width_per_group / 64.
            inner = scaled_channels(planes, widen)
            blocks = []
            for j in range(count):
                blocks.append(Bottleneck(in_planes, planes, inner, 2 if i > 0 and j == 0 else 1))
                in_planes = planes * EXPANSION
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        # Convs: Xavier uniform (Wen et al. App. D.2) or torchvision's He-normal; BN at identity.
        # The FC keeps PyTorch's default (torchvision does not zero its bias).
        init_weights(self, init, zero_linear_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.groups(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


@register_model(
    "wrn_bottleneck",
    default_width=2,
    default_depth=50,
    depths=tuple(_UNITS),
    width_meaning="widen factor k of the bottleneck 3x3 convs (k x 64, 128, 256, 512 channels)",
    fractional_width=True,
)
def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int | float,
    depth: int | None,
    stem: str = "small",
    init: str = "xavier",
    base_channels: int = 64,
) -> nn.Module:
    """WRN-``depth``-``width`` with bottleneck units: Zagoruyko & Komodakis, "Wide Residual
    Networks" (BMVC 2016), as torchvision's ``wide_resnet50_2``; the Tiny-ImageNet model of Wen,
    Li & Jia, "Towards Understanding the Regularization of Adversarial Robustness on Neural
    Networks" (ICML 2020), Appendix D.2.

    Four groups of [3, 4, 6, 3] bottleneck units (depth 50; 101: [3, 4, 23, 3]; 152:
    [3, 8, 36, 3]); group ``i`` has ``planes = 64 * 2**i``, its 3x3 convs ``int(k * planes)``
    channels and its outputs ``4 * planes``. Wen et al. replace the 7x7 stride-2 stem by a 3x3
    stride-1 conv and drop the max-pool "to fit the 56 x 56 input size", keep batch norm and
    initialize convs with Xavier uniform: the defaults here. With ``stem="imagenet"`` and
    ``init="kaiming"`` it is torchvision's network: 68,883,240 parameters for 1,000 classes
    (67,244,040 for Tiny-ImageNet's 200; with the small stem 67,236,360).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (pooling is adaptive).
        width: widen factor ``k`` (default 2; 1 is ResNet-50). A fraction is allowed, the
            inner widths rounded down as torchvision's ``int(planes * width_per_group / 64)``.
        depth: 50 (default), 101 or 152.
        stem: ``"small"`` (3x3 stride 1, no max-pool: Wen et al., for 56/64-pixel images) or
            ``"imagenet"`` (7x7 stride 2 + 3x3 stride-2 max-pool: torchvision, 224 pixels).
        init: conv initialization, ``"xavier"`` (uniform, Wen et al.) or ``"kaiming"``
            (normal, fan-out: torchvision).
        base_channels: ``planes`` of the first group (default 64); smaller values give a
            proportionally thinner network for quick experiments.
    """
    if stem not in STEMS:
        raise ConfigError("model.options.stem", stem, f"one of {', '.join(STEMS)}")
    if init not in INITS:
        raise ConfigError("model.options.init", init, f"one of {', '.join(INITS)}")
    if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
        raise ConfigError("model.options.base_channels", base_channels, "a positive integer")
    assert depth is not None  # create_model supplies the default depth
    return BottleneckWideResNet(
        _UNITS[depth], width, num_classes, in_channels, base_channels, stem, init
    )
