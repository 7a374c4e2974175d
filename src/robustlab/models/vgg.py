"""VGG networks with a width factor, as in Liu et al. (2020)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ._base import register_model, scaled_channels

# Convs per stage for each depth (Simonyan & Zisserman, Table 1, configurations A, B, D, E);
# stage i has (4w, 8w, 16w, 32w, 32w)[i] channels and ends in a 2x2 max-pool.
_STAGE_CONVS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_STAGE_WIDTHS = (4, 8, 16, 32, 32)


class VGG(nn.Module):
    """Five stages of 3x3 convs (+BN) + ReLU, each closed by a max-pool; global pool; FC."""

    def __init__(
        self,
        depth: int,
        width: int | float,
        num_classes: int,
        in_channels: int,
        image_size: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        planes, side = in_channels, image_size
        for convs, factor in zip(_STAGE_CONVS[depth], _STAGE_WIDTHS, strict=True):
            # int(factor * width), as Liu et al.'s CIFAR10_VGG (a fractional w is rounded down).
            channels = scaled_channels(factor, width)
            for _ in range(convs):
                layers.append(nn.Conv2d(planes, channels, 3, padding=1))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(nn.ReLU(inplace=True))
                planes = channels
            # Images smaller than 32x32 reach 1x1 before the last stage; pooling further is
            # impossible, so the remaining stages keep the 1x1 map.
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@register_model(
    "vgg",
    default_width=16,
    default_depth=16,
    depths=tuple(_STAGE_CONVS),
    width_meaning="width factor w (stages 4w, 8w, 16w, 32w, 32w; 16 is standard VGG)",
    fractional_width=True,
)
def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int | float,
    depth: int | None,
    batchnorm: bool = True,
) -> nn.Module:
    """VGG-``depth`` of Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
    Image Recognition" (ICLR 2015), in the CIFAR form of Liu et al., "On the Loss Landscape of
    Adversarial Training" (NeurIPS 2020), Appendix Table 2: 3x3 convs with channels scaled by
    ``w``, max-pools between stages, global average pooling and one ``FC(32w, num_classes)``.

    VGG-16: ``Conv(4w)x2, M, Conv(8w)x2, M, Conv(16w)x3, M, Conv(32w)x3, M, Conv(32w)x3, M``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width (any size >= 8; pools stop at 1x1).
        width: width factor ``w`` (default 16, i.e. 64-128-256-512-512 channels); a fraction
            is allowed, each count rounded down (``int(4 * w)``, as Liu et al.'s code).
        depth: 11, 13, 16 (default) or 19.
        batchnorm: batch normalization after each conv (default ``True``).
    """
    if not isinstance(batchnorm, bool):
        raise ConfigError("model.options.batchnorm", batchnorm, "true or false")
    assert depth is not None  # create_model supplies the default depth
    return VGG(depth, width, num_classes, in_channels, image_size, batchnorm)
