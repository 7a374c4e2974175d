"""Tiny-ImageNet-200 from the official folder of JPEG files, with a decoded-array cache.

Le and Yang, "Tiny ImageNet Visual Recognition Challenge", Stanford CS231N, 2015.
http://cs231n.stanford.edu/tiny-imagenet-200.zip
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from ._base import CROP_FLIP, DATASETS, ImageDataset, channel_stats, from_numpy
from ._download import first_directory_with, locate
from ._images import decode_images, pillow, write_cache

_SOURCE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_FOLDER = "tiny-imagenet-200"
_SIZE = 64
CACHE_NAME = "robustlab-cache.npz"
# Bump when the cache's contents change meaning; older caches are then rebuilt.
_CACHE_VERSION = 1
_CACHE_KEYS = ("version", "wnids", "train_x", "train_y", "test_x", "test_y", "mean", "std")


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise DataFormatError(f"{path}: a wnid appears twice")
    if not wnids:
        raise DataFormatError(f"{path}: no wnids")
    return wnids


def _train_files(directory: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    """``train/<wnid>/images/*.JPEG`` in class order, each with its class index."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = directory / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataNotFoundError(
                f"tiny_imagenet needs {folder} (wnids.txt lists {wnid}; official files: {_SOURCE})"
            )
        files = sorted(folder.glob("*.JPEG"))
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _val_files(directory: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    """``val/images/*.JPEG`` in the order of ``val_annotations.txt``, with their labels.

    Each line of the annotations is tab-separated: file name, wnid, then the bounding box.
    """
    index = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = directory / "val" / "val_annotations.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataFormatError(
                f"{annotations}, line {number}: expected '<file>\\t<wnid>\\t...' with a wnid "
                f"from wnids.txt, found {line!r}"
            )
        paths.append(directory / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, np.asarray(labels, dtype=np.int64)


def _decode_all(directory: Path, wnids: list[str]) -> dict[str, np.ndarray]:
    """Decode every image (64 x 64 each: another size is a format error, not resized; greyscale
    JPEGs converted to RGB) and compute the training set's channel statistics."""
    image = pillow("tiny_imagenet")
    train_paths, train_y = _train_files(directory, wnids)
    test_paths, test_y = _val_files(directory, wnids)
    train_x = decode_images(image, train_paths, _SIZE, resize=False)
    mean, std = channel_stats(torch.from_numpy(train_x))
    return {
        "version": np.asarray(_CACHE_VERSION),
        "wnids": np.asarray(wnids),
        "train_x": train_x,
        "train_y": train_y,
        "test_x": decode_images(image, test_paths, _SIZE, resize=False),
        "test_y": test_y,
        "mean": np.asarray(mean),
        "std": np.asarray(std),
    }


def _read_cache(path: Path, wnids_path: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the cache is missing, older than wnids.txt, or unusable."""
    try:
        # >=, not >: file times are coarse (a few ms), and the wnids are compared below anyway.
        if path.stat().st_mtime < wnids_path.stat().st_mtime:
            return None
        with np.load(path, allow_pickle=False) as cache:
            arrays = {key: cache[key] for key in _CACHE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    consistent = (
        int(arrays["version"]) == _CACHE_VERSION
        and arrays["wnids"].tolist() == wnids
        and arrays["train_x"].shape[1:] == (3, _SIZE, _SIZE)
        and arrays["test_x"].shape[1:] == (3, _SIZE, _SIZE)
        and len(arrays["train_x"]) == len(arrays["train_y"])
        and len(arrays["test_x"]) == len(arrays["test_y"])
    )
    return arrays if consistent else None


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(root: Path, download: bool = False, cache: bool = True) -> ImageDataset:
    """Tiny-ImageNet-200: 100,000 training and 10,000 validation 64 x 64 images, 200 classes.

    Reads the official ``root/tiny-imagenet-200`` folder (or ``root`` itself if it is that
    folder): class ``i`` is line ``i`` of ``wnids.txt``; training images are
    ``train/<wnid>/images/*.JPEG``; the labelled validation images ``val/images/*.JPEG``, with
    ``val/val_annotations.txt``, serve as the test set (the official test set has no labels).
    Greyscale JPEGs are converted to RGB. Per-channel statistics are computed from the
    training images.

    Decoding 110,000 JPEGs (with Pillow) takes a while, so the decoded arrays are kept in
    ``tiny-imagenet-200/robustlab-cache.npz`` (about 1.4 GB) when the folder is writable, and
    reused while that file is not older than ``wnids.txt``. Delete it to force a rebuild.

    Args:
        root: the data root.
        download: not supported (torchvision has no Tiny-ImageNet class); the error says where
            to get the zip when the files are missing.
        cache: read and write the decoded-array cache.
    """
    names = ["wnids.txt", "val/val_annotations.txt"]
    candidates = [root / _FOLDER, root]
    directory = locate(
        "tiny_imagenet",
        root,
        lambda: first_directory_with(candidates, names),
        [root / _FOLDER / name for name in (*names, "train/<wnid>/images/*.JPEG")],
        _SOURCE,
        download=download,
        fetch=None,
    )
    wnids_path = directory / "wnids.txt"
    wnids = _read_wnids(wnids_path)
    cache_path = directory / CACHE_NAME
    arrays = _read_cache(cache_path, wnids_path, wnids) if cache else None
    if arrays is None:
        arrays = _decode_all(directory, wnids)
        if cache:
            write_cache(cache_path, arrays, "tiny_imagenet")
    return from_numpy(
        "tiny_imagenet",
        (arrays["train_x"], arrays["train_y"]),
        (arrays["test_x"], arrays["test_y"]),
        len(wnids),
        CROP_FLIP,
        mean=arrays["mean"].tolist(),
        std=arrays["std"].tolist(),
    )
