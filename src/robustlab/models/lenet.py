"""The small two-conv network of Liu et al. (2020), with a width factor."""

from __future__ import annotations

from torch import nn

from ._base import register_model


@register_model("lenet", default_width=16, width_meaning="width factor w (convs 2w and 4w, FC 64w)")
def build(
    num_classes: int, in_channels: int, image_size: int, *, width: int, depth: int | None
) -> nn.Module:
    """LeNet-style network of Liu et al., "On the Loss Landscape of Adversarial Training"
    (NeurIPS 2020), Appendix Table 2.

    ``Conv(2w, 3x3, pad 1)``, ReLU, max-pool 2; ``Conv(4w, 3x3, pad 1)``, ReLU, max-pool 2;
    ``FC(4w * (s/4)^2, 64w)``, ReLU; ``FC(64w, num_classes)``. The depth is fixed.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: image height and width ``s``.
        width: width factor ``w`` (default 16: convs of 32 and 64 channels, FC of 1024 units).
        depth: unused (fixed depth); always ``None``.
    """
    w = width
    # Two floor-halvings, so odd sizes give the same feature size the pooling layers produce.
    side = image_size // 2 // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 2 * w, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * w * side * side, 64 * w),
        nn.ReLU(inplace=True),
        nn.Linear(64 * w, num_classes),
    )
