"""Batched training augmentations: one tensor op per batch, on the batch's device.

No per-sample Python: offsets and flip decisions are drawn for the whole batch at once from a
seeded generator, so an epoch's augmentation is reproducible from ``(seed, epoch)``.
"""

from __future__ import annotations

import math
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


# torchvision's RandomResizedCrop defaults: the crop covers 8% to 100% of the image, with an
# aspect ratio (width / height) between 3/4 and 4/3, log-uniform; 10 tries, then a central crop.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10


def random_resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """``(top, left, h, w)`` of one random crop per image, int64 ``batch x 4``: torchvision's
    ``RandomResizedCrop.get_params`` drawn for the whole batch at once.

    Each image gets :data:`RRC_ATTEMPTS` candidate (area, ratio) pairs; the first whose crop fits
    in the image is kept (its offset uniform over the positions where it fits); an image with
    none falls back to torchvision's central crop (the whole image, its ratio clamped to
    ``ratio``).
    """
    area = height * width
    shape = (batch, RRC_ATTEMPTS)
    target = area * (scale[0] + (scale[1] - scale[0]) * _uniform(shape, generator, device))
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * _uniform(shape, generator, device))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 if none)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    # torchvision's fallback, the same for every image of the batch.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback = (round(width / min(ratio)), width)
    elif in_ratio > max(ratio):
        fallback = (height, round(height * max(ratio)))
    else:
        fallback = (height, width)
    h = torch.where(found, h, fallback[0])
    w = torch.where(found, w, fallback[1])
    offsets = _uniform((2, batch), generator, device)
    top = (offsets[0] * (height - h + 1)).long().clamp_max(height - h)
    left = (offsets[1] * (width - w + 1)).long().clamp_max(width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop each image to its box and resize it back to the image's size, bilinearly: float32.

    Per image this is ``F.interpolate(crop, size, mode="bilinear", align_corners=False)`` of
    the crop alone (pixels outside the box are never read, as cropping first guarantees),
    mirrored left-right where ``flip``; for the whole batch it is four ``gather`` calls (the
    bilinear corners) over the flattened pixels. The crops are never larger than the image, so
    resizing only enlarges and needs no antialiasing filter.

    Args:
        x: images, B x C x H x W (any dtype; uint8 for the loaders).
        boxes: ``(top, left, h, w)`` per image, int64 B x 4.
        flip: bool B, mirror these images' output (None: no flips).
    """
    batch, channels, height, width = x.shape
    top, left, h, w = (boxes[:, k : k + 1] for k in range(4))  # each B x 1

    def axis(count: int, size: int, extent: torch.Tensor, start: torch.Tensor, mirror: bool):
        """Source rows (or columns) of each output row: the two neighbours and the weight of
        the second, as ``F.interpolate`` computes them (half-pixel centres, clamped at 0)."""
        k = torch.arange(count, device=x.device, dtype=torch.float64).expand(batch, count)
        if mirror and flip is not None:
            k = torch.where(flip[:, None], count - 1 - k, k)
        source = ((k + 0.5) * (extent / size) - 0.5).clamp_min(0)
        low = source.floor().long().clamp_max(extent - 1)
        high = (low + 1).clamp_max(extent - 1)
        return low + start, high + start, (source - low).float()

    y0, y1, wy = axis(height, height, h, top, mirror=False)
    x0, x1, wx = axis(width, width, w, left, mirror=True)
    flat = x.reshape(batch, channels, height * width)

    def pick(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)
        values = flat.gather(2, index.expand(batch, channels, height * width))
        return values.view(batch, channels, height, width).float()

    wy, wx = wy[:, None, :, None], wx[:, None, None, :]
    top_row = pick(y0, x0) * (1 - wx) + pick(y0, x1) * wx
    bottom_row = pick(y1, x0) * (1 - wx) + pick(y1, x1) * wx
    return top_row * (1 - wy) + bottom_row * wy


@AUGMENTATIONS.register("random_resized_crop")
def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ImageNet-style training augmentation (image_folder): torchvision's
    ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` back to the image's size,
    then ``RandomHorizontalFlip()``, for the whole batch at once; rounded back to uint8 as
    those transforms on 8-bit images are."""
    batch, _, height, width = x.shape
    boxes = random_resized_crop_boxes(batch, height, width, generator, x.device)
    flip = torch.rand(batch, generator=generator, device=x.device) < 0.5
    out = resized_crop(x, boxes, flip)
    return out.round_().clamp_(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out
