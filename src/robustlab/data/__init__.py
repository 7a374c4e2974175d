"""Datasets held as tensors on the training device, and the on-device batch loader.

>>> data = create_dataset("digits")
>>> loader = DeviceLoader(data.train_x, data.train_y, batch_size=128, shuffle=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._options import check_options
from . import cifar, digits, image_folder, mnist, svhn, synthetic, tiny_imagenet  # noqa: F401
from ._base import DATASETS, ImageDataset, channel_stats
from .augment import (
    AUGMENTATIONS,
    random_crop,
    random_flip,
    random_resized_crop_boxes,
    resized_crop,
)
from .extra import MixedLoader, load_extra
from .loader import DeviceLoader

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DeviceLoader",
    "ImageDataset",
    "MixedLoader",
    "channel_stats",
    "create_dataset",
    "list_datasets",
    "load_extra",
    "random_crop",
    "random_flip",
    "random_resized_crop_boxes",
    "resized_crop",
]


def list_datasets(pattern: str | None = None) -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names(pattern)


def create_dataset(
    name: str, root: str | Path = "data", download: bool = False, **options: Any
) -> ImageDataset:
    """Load dataset ``name`` from ``root`` (official file formats) into CPU tensors.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataNotFoundError: the official files are not under ``root`` (the message lists them).
        ConfigError: an option the dataset does not take, or an invalid option value.
    """
    factory = DATASETS.get(name)
    check_options(name, factory, options, key_prefix="data.options", fixed=("root", "download"))
    return factory(Path(root), download=download, **options)
