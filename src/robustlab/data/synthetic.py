"""A seeded synthetic image-classification problem for fast tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ._base import CROP_FLIP, DATASETS, NO_AUGMENT, ImageDataset, from_numpy


@DATASETS.register("synthetic")
def load_synthetic(
    root: Path | None = None,
    download: bool = False,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 8,
    noise: float = 0.15,
    augment: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """Class prototypes (smooth random images) plus Gaussian pixel noise, quantized to uint8.

    Args:
        n_train, n_test: number of training and test images.
        num_classes: number of classes (one prototype each).
        channels, image_size: image shape.
        noise: standard deviation of the pixel noise, in [0, 1] units; larger is harder.
        augment: use CIFAR-style crop + flip augmentation (to exercise that path).
        seed: generator seed (independent of the run seed: the data is fixed per options).
    """
    for key, value in (
        ("n_train", n_train),
        ("n_test", n_test),
        ("channels", channels),
        ("image_size", image_size),
    ):
        if value <= 0:
            raise ConfigError(f"data.options.{key}", value, "a positive integer")
    if num_classes < 2:
        raise ConfigError("data.options.num_classes", num_classes, "an integer >= 2")
    if noise < 0:
        raise ConfigError("data.options.noise", noise, "a non-negative float")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.15, 0.85, size=(num_classes, channels, 4, 4))
    # Nearest-neighbour upsampling gives each prototype coarse structure a convnet can pick up.
    repeat = -(-image_size // 4)
    prototypes = coarse.repeat(repeat, axis=2).repeat(repeat, axis=3)[
        :, :, :image_size, :image_size
    ]

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, size=n)
        images = prototypes[labels] + noise * rng.standard_normal(
            (n, channels, image_size, image_size)
        )
        return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8), labels

    train, test = sample(n_train), sample(n_test)
    return from_numpy("synthetic", train, test, num_classes, CROP_FLIP if augment else NO_AUGMENT)
