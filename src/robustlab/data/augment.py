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
    offsets = torch.randint(
        0, 2 * padding + 1, (2, x.shape[0]), generator=generator, device=x.device
    )
    return _shifted(x, padding, offsets, flip=None)


def _shifted(
    x: torch.Tensor, padding: int, offsets: torch.Tensor, flip: torch.Tensor | None
) -> torch.Tensor:
    """Crop every image of the zero-padded batch at its offset, mirrored where ``flip``, in one
    ``gather`` over the flattened pixels (one index per output pixel, shared by the channels)."""
    batch, channels, height, width = x.shape
    padded_width = width + 2 * padding
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    cols = torch.arange(width, device=x.device).expand(batch, width)
    if flip is not None:
        cols = torch.where(flip[:, None], width - 1 - cols, cols)
    cols = cols + offsets[1, :, None]  # B x W
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # B x H
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, height * width)
    flat = padded.view(batch, channels, -1)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(
        batch, channels, height, width
    )


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
    """CIFAR, SVHN, Tiny-ImageNet: 4-pixel zero-padded random crop, then random horizontal flip
    (the same draws, and the same images, as ``random_flip(random_crop(x))``, in one gather)."""
    offsets = torch.randint(0, 9, (2, x.shape[0]), generator=generator, device=x.device)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return _shifted(x, 4, offsets, flip)


@AUGMENTATIONS.register("crop")
def crop_only(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """4-pixel zero-padded random crop without flips (for data where mirroring changes meaning)."""
    return random_crop(x, 4, generator)
