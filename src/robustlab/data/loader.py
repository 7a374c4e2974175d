"""On-device batching: shuffle with a device-side permutation, augment per batch, map to [0, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol

import torch

from .augment import AUGMENTATIONS

_SEED_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs map to distinct generator seeds


class EpochBatches(ABC):
    """What the on-device loaders share: uint8 images and labels on the device, a batch size, a
    registered augmentation and a base seed; ``len()`` batches per epoch, and each epoch's
    randomness (permutations, augmentation) drawn from one generator seeded with
    ``(seed, epoch)``, so a resumed run sees exactly the batches the uninterrupted run would
    have seen. A subclass writes only :meth:`epoch`.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: str, seed: int
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.augment_name = augment
        self.augment = AUGMENTATIONS.get(augment)
        self.seed = seed

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def generator(self, epoch: int) -> torch.Generator:
        """Epoch ``epoch``'s generator, on the images' device."""
        return torch.Generator(device=self.images.device).manual_seed(
            self.seed * _SEED_STRIDE + epoch
        )

    def finish(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch augmented (uint8, as one batch) and mapped to float32 in [0, 1]."""
        return self.augment(x, generator).float().div_(255), y

    @abstractmethod
    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, reproducible from ``(seed, epoch)``."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


class DeviceLoader(EpochBatches):
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
        super().__init__(images, labels, batch_size, augment, seed)
        self.shuffle = shuffle

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, reproducible from ``(seed, epoch)``."""
        device = self.images.device
        generator = self.generator(epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator, device=device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                x, y = self.images[index], self.labels[index]
            yield self.finish(x, y, generator)


class Batches(Protocol):
    """What the training loop iterates: :class:`DeviceLoader`, the extra-data mixing loader."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class ShardedLoader:
    """One process's share of every batch of ``loader``, for DistributedDataParallel.

    Every rank iterates the same ``loader`` (the same global batch at every step: its permutation
    and augmentation depend on ``(seed, epoch)`` only) and keeps the ``rank``-th of ``world_size``
    contiguous shards of each batch (:func:`torch.tensor_split`: sizes differ by at most one), so
    the union of the ranks' shards is exactly the batch one process trains on, and a resumed run
    sees the same shards. Drawing the whole batch on every rank costs K-fold indexing and
    augmentation of uint8 images, negligible beside the model's passes.

    A final batch of fewer than ``world_size`` examples is skipped (a rank would get none, and
    DDP needs every rank's backward pass).

    Attributes:
        shard_weight: K·n_r/N for the shard last yielded (n_r of the batch's N examples): the
            factor on the shard's mean loss that makes DDP's average over the ranks the global
            batch's mean (1.0 when the shards are equal).
    """

    def __init__(self, loader: Batches, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.shard_weight = 1.0

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader.epoch(epoch):
            n = len(y)
            if n < self.world_size:
                continue
            x_shard = x.tensor_split(self.world_size)[self.rank]
            y_shard = y.tensor_split(self.world_size)[self.rank]
            self.shard_weight = self.world_size * len(y_shard) / n
            yield x_shard, y_shard

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
