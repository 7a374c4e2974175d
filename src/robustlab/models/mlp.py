"""A fully connected network: the simplest family for width sweeps."""

from __future__ import annotations

from torch import nn

from ._base import register_model


@register_model(
    "mlp",
    default_width=256,
    default_depth=2,
    width_meaning="units per hidden layer",
)
def build(
    num_classes: int, in_channels: int, image_size: int, *, width: int, depth: int | None
) -> nn.Module:
    """Multi-layer perceptron on flattened pixels.

    Flatten, then ``depth`` hidden layers ``Linear(width)`` + ReLU, then ``Linear(num_classes)``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width.
        width: units per hidden layer (default 256).
        depth: number of hidden layers (default 2).
    """
    assert depth is not None  # create_model supplies the default depth
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
