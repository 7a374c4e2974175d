"""On-device batching: shuffle with a device-side permutation, augment per batch, map to [0, 1]."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augment import AUGMENTATIONS

_SEED_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs map to distinct generator seeds


class DeviceLoader:
    """Iterates over ``(x, y)`` batches of a tensor dataset that already lives on the device.

    Args:
        images: uint8 images, N x C x H x W, on the training device.
        labels: int64 labels, N.
        batch_size: batch size (the last batch may be smaller).
        shuffle: draw a fresh permutation each epoch.
        augment: a registered augmentation name (``"none"``, ``"crop_flip"``, ``"crop"``).
        seed: base seed; epoch ``e`` uses a generator seeded with ``(seed, e)``, so a resumed run
            sees exactly the batches the uninterrupted run would have seen.

    Yields:
        ``x`` float32 in [0, 1] and ``y`` int64, both on the images' device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: str = "none",
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment_name = augment
        self.augment = AUGMENTATIONS.get(augment)
        self.seed = seed

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, reproducible from ``(seed, epoch)``."""
        device = self.images.device
        generator = torch.Generator(device=device).manual_seed(self.seed * _SEED_STRIDE + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator, device=device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                x, y = self.images[index], self.labels[index]
            x = self.augment(x, generator)
            yield x.float().div_(255), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
