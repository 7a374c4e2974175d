"""Batched training augmentations: one tensor op per batch, on the batch's device.

No per-sample Python: offsets and flip decisions are drawn for the whole batch at once from a
seeded generator, so an epoch's augmentation is reproducible from ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..registry import Registry

AUGMENTATIONS: Registry[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = Registry(
    "augmentation", "data.augment"
)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels and crop back to its size at a random offset.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` applied per sample.
    """
    batch, channels, height, width = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # B x H
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # B x W
    b = torch.arange(batch, device=x.device)[:, None, None, None]
    c = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@AUGMENTATIONS.register("none")
def no_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Digits, MNIST: no augmentation."""
    return x


@AUGMENTATIONS.register("crop_flip")
def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR, SVHN, Tiny-ImageNet: 4-pixel zero-padded random crop, then random horizontal flip."""
    return random_flip(random_crop(x, 4, generator), generator)


@AUGMENTATIONS.register("crop")
def crop_only(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """4-pixel zero-padded random crop without flips (for data where mirroring changes meaning)."""
    return random_crop(x, 4, generator)
