"""The in-memory dataset record every loader returns, and helpers shared by the loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ConfigError, DataFormatError
from ..registry import Registry

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset", "data.name")

# Augmentations applied to training batches, by dataset family (see augment.py).
CROP_FLIP = "crop_flip"
NO_AUGMENT = "none"


@dataclass(frozen=True)
class ImageDataset:
    """A classification dataset held as tensors.

    Images are uint8 in NCHW layout (values 0..255, mapped to [0, 1] per batch) so that even
    CIFAR-size training sets fit on the device at a quarter of the float32 memory.

    Attributes:
        name: registry name.
        train_x, train_y: training images (uint8, N x C x H x W) and labels (int64, N).
        test_x, test_y: test images and labels.
        num_classes: number of classes.
        mean, std: per-channel statistics of the training images in [0, 1] (for the model's
            normalization layer).
        augment: the training augmentation the literature uses for this data (``"crop_flip"``:
            4-pixel zero-padded random crop + horizontal flip; ``"none"``).
        val_x, val_y: the held-out validation split (empty until :meth:`split_validation`).
        extra_x, extra_y: extra pseudo-labelled training images and labels, mixed into each
            training batch (``data.extra``, :mod:`robustlab.data.extra`); None without.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = NO_AUGMENT
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    extra_x: torch.Tensor | None = None
    extra_y: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy with every tensor on ``device``."""
        moved = {
            field: getattr(self, field).to(device)
            for field in (
                "train_x",
                "train_y",
                "test_x",
                "test_y",
                "val_x",
                "val_y",
                "extra_x",
                "extra_y",
            )
            if getattr(self, field) is not None
        }
        return replace(self, **moved)

    def split_validation(self, val_size: int | float, seed: int) -> ImageDataset:
        """Hold out ``val_size`` training points (a count, or a fraction if < 1) for validation.

        The split is a seeded permutation of the training set, so it is the same for every
        run with the same seed whatever the model or method.
        """
        n = len(self.train_y)
        count = (
            round(val_size * n) if isinstance(val_size, float) and val_size < 1 else int(val_size)
        )
        if count < 0 or count >= n:
            raise ConfigError(
                "data.val_size",
                val_size,
                f"a count in [0, {n - 1}] or a fraction in [0, 1) of the {n} training points",
            )
        if count == 0:
            return self
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).to(self.train_y.device)
        val_idx, train_idx = order[:count], order[count:]
        return replace(
            self,
            train_x=self.train_x[train_idx],
            train_y=self.train_y[train_idx],
            val_x=self.train_x[val_idx],
            val_y=self.train_y[val_idx],
        )

    def subsample_train(self, train_size: int | float, seed: int) -> ImageDataset:
        """Keep ``train_size`` training points (a count, or a fraction if < 1): a seeded,
        class-stratified subset, so that a result can be measured against the training-set size
        n (Xing, Song & Cheng 2022, Table 3: ε* at n = 10K and 50K).

        Each class keeps its share of the count, rounded by largest remainder, so every class's
        count is within one point of ``train_size · n_c / n``; within a class the points are a
        seeded random choice, kept in their original order. Applied after
        :meth:`split_validation`, so the validation split is the same whatever ``train_size``.

        Raises:
            ConfigError: ``train_size`` ≤ 0 or more than the training points.
        """
        n = len(self.train_y)
        count = (
            round(train_size * n)
            if isinstance(train_size, float) and train_size < 1
            else int(train_size)
        )
        if not 0 < count <= n or (isinstance(train_size, float) and train_size >= 1):
            raise ConfigError(
                "data.train_size",
                train_size,
                f"a count in [1, {n}] or a fraction in (0, 1) of the {n} training points "
                "left after the validation split",
            )
        if count == n:
            return self
        labels = self.train_y.cpu()
        counts = torch.bincount(labels, minlength=self.num_classes).double()
        quota = counts * count / n
        keep = quota.floor().long()
        # Largest remainder: the points still missing go to the classes with the largest
        # fractional parts (ties by class index, for a deterministic answer).
        missing = count - int(keep.sum())
        order = sorted(range(len(quota)), key=lambda c: (-(quota[c] - keep[c]).item(), c))
        for c in order[:missing]:
            keep[c] += 1
        generator = torch.Generator().manual_seed(seed)
        chosen = []
        for c in range(len(keep)):
            members = torch.nonzero(labels == c).flatten()
            pick = torch.randperm(len(members), generator=generator)[: int(keep[c])]
            chosen.append(members[pick])
        index = torch.cat(chosen).sort().values.to(self.train_y.device)
        return replace(self, train_x=self.train_x[index], train_y=self.train_y[index])


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, in [0, 1] units.

    Sums of values and squares are accumulated exactly in int64 over chunks of images, so memory
    stays small even for SVHN+extra or Tiny-ImageNet.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    squares = torch.zeros(channels, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.int64)
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.double() / count
    var = (squares.double() / count - mean**2) * count / max(count - 1, 1)
    std = var.clamp_min(0).sqrt() / 255
    return tuple((mean / 255).tolist()), tuple(std.clamp_min(1e-3).tolist())


def from_numpy(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    augment: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Build an :class:`ImageDataset` from uint8 NCHW arrays and integer labels.

    Raises:
        DataFormatError: the training or the test split holds no images (every statistic and
            accuracy of an empty split is undefined).
    """
    for split, (images, _) in (("training", train), ("test", test)):
        if len(images) == 0:
            raise DataFormatError(f"{name}: the {split} split holds no images; expected at least 1")
    train_x = torch.from_numpy(np.ascontiguousarray(train[0], dtype=np.uint8))
    test_x = torch.from_numpy(np.ascontiguousarray(test[0], dtype=np.uint8))
    train_y = torch.from_numpy(np.asarray(train[1], dtype=np.int64))
    test_y = torch.from_numpy(np.asarray(test[1], dtype=np.int64))
    if mean is None or std is None:
        mean, std = channel_stats(train_x)
    return ImageDataset(
        name, train_x, train_y, test_x, test_y, num_classes, tuple(mean), tuple(std), augment
    )
