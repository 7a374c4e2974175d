"""Width-parameterized model families from the adversarial-robustness literature.

>>> model = create_model("wrn", num_classes=10, in_channels=3, image_size=32, width=10, depth=34)

Every model takes images in [0, 1]; per-channel normalization is its first layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .._options import check_options
from . import (  # noqa: F401  (registration)
    densenet,
    lenet,
    mlp,
    preact_resnet,
    resnet_cifar,
    vgg,
    wide_resnet,
    wide_resnet_bottleneck,
)
from ._base import (
    MODELS,
    FamilySpec,
    Normalize,
    NormalizedModel,
    family_spec,
    normalize_width,
    validate_shape_args,
)
from .ensemble import SnapshotEnsemble

_FIXED_ARGS = ("num_classes", "in_channels", "image_size", "width", "depth")

__all__ = [
    "MODELS",
    "FamilySpec",
    "Normalize",
    "NormalizedModel",
    "SnapshotEnsemble",
    "count_parameters",
    "create_model",
    "family_spec",
    "list_models",
    "normalize_width",
]


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered model families, optionally filtered by a shell pattern."""
    return MODELS.names(pattern)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int | float | None = None,
    depth: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> NormalizedModel:
    """Build a model of family ``name`` for images of shape ``(in_channels, image_size, image_size)``.

    Args:
        name: a registered family (see :func:`list_models`).
        num_classes: number of output logits.
        in_channels: image channels (1 for grey, 3 for colour).
        image_size: image height and width in pixels.
        width: the family's width knob (``None``: its standard value; see ``family_spec(name)``);
            a fraction (WRN-34-0.5) where the family scales channels by a factor
            (``family_spec(name).fractional_width``).
        depth: the family's depth (``None``: its standard value).
        mean, std: per-channel statistics for the normalization layer (default: identity).
        **options: family-specific options (e.g. ``batchnorm=False`` for ``resnet_cifar``).

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: width, depth or an option is invalid for the family.
    """
    factory = MODELS.get(name)
    spec = family_spec(name)
    width = spec.default_width if width is None else normalize_width(width)
    depth = spec.default_depth if depth is None else depth
    validate_shape_args(name, spec, width, depth)
    check_options(f"{name}", factory, options, key_prefix="model.options", fixed=_FIXED_ARGS)
    net = factory(num_classes, in_channels, image_size, width=width, depth=depth, **options)
    mean = [0.0] * in_channels if mean is None else list(mean)
    std = [1.0] * in_channels if std is None else list(std)
    return NormalizedModel(net, mean, std)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
