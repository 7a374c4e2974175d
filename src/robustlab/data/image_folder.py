"""Any classification dataset stored as class sub-folders of image files (torchvision's
ImageFolder layout), decoded once, resized to one square size and cached as uint8 arrays.

For ImageNet-style data: Wu et al. (2021, Appendix E) train Fast AT on ImageNet; downsampled
variants (ImageNet 32/64) and other folder datasets load the same way. The folder layout::

    ROOT/train/<class>/<image>.jpg|png|...
    ROOT/val/<class>/<image>...        (or ROOT/test/..., or data.options.test_dir)

ImageNet's official validation images come in one flat folder: sort them into class folders
first (the PyTorch ImageNet example's ``valprep.sh`` does).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataFormatError, DataNotFoundError
from ._base import DATASETS, ImageDataset, channel_stats, from_numpy
from ._download import locate
from ._images import decode_images, pillow, write_cache

# torchvision's IMG_EXTENSIONS (datasets/folder.py), compared case-insensitively.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The ImageNet training augmentation (data/augment.py), this dataset's default.
RANDOM_RESIZED_CROP = "random_resized_crop"
_SOURCE = "a folder of class sub-folders of images, as torchvision's ImageFolder reads"
# Bump when the cache's contents change meaning; older caches are then rebuilt.
_CACHE_VERSION = 1
_CACHE_KEYS = (
    "version",
    "fingerprint",
    "classes",
    "train_x",
    "train_y",
    "test_x",
    "test_y",
    "mean",
    "std",
)


def _classes(directory: Path) -> list[str]:
    """The class names: the sub-folders of ``directory``, sorted (torchvision's order)."""
    return sorted(entry.name for entry in directory.iterdir() if entry.is_dir())


def _files(directory: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image under ``directory/<class>/`` (sub-folders included), with its class index,
    in class then path order; a class folder missing here has no images here."""
    paths: list[Path] = []
    labels: list[int] = []
    index = {name: label for label, name in enumerate(classes)}
    for name in _classes(directory):
        if name not in index:
            raise DataFormatError(
                f"{directory / name}: class folder not among the training classes "
                f"({len(classes)} folders under the training directory)"
            )
        files = sorted(p for p in (directory / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        paths += files
        labels += [index[name]] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _fingerprint(paths: list[Path], size: int, grayscale: bool) -> str:
    """A hash of every file's path, size and modification time, and of the decoding settings:
    the cache is used only while it matches (a file added, removed or changed rebuilds it)."""
    digest = hashlib.sha256(f"{_CACHE_VERSION} {size} {grayscale}\n".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the cache is missing, stale or unusable."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            arrays = {key: cache[key] for key in _CACHE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    fresh = int(arrays["version"]) == _CACHE_VERSION and str(arrays["fingerprint"]) == fingerprint
    return arrays if fresh else None


def _directory(root: Path, option: str, defaults: tuple[str, ...]) -> list[Path]:
    """Candidate folders: ``option`` (relative to ``root`` unless absolute), else the defaults."""
    if option:
        path = Path(option).expanduser()
        return [path if path.is_absolute() else root / path]
    return [root / name for name in defaults]


@DATASETS.register("image_folder")
def load_image_folder(
    root: Path,
    download: bool = False,
    train_dir: str = "",
    test_dir: str = "",
    image_size: int = 64,
    grayscale: bool = False,
    cache: bool = True,
) -> ImageDataset:
    """Class sub-folders of images (the ImageFolder layout), as one square size.

    Classes are the training directory's sub-folders, sorted (as torchvision's ``ImageFolder``
    numbers them); files with an image extension (``.jpg``, ``.png``, ... in any case) in a
    class folder or below it are its images. Each image is converted to RGB (or greyscale),
    its shorter side resized to ``image_size`` and the centre square kept (torchvision's
    ``Resize(s)`` + ``CenterCrop(s)``, decoded with Pillow: ``pip install -e .[images]``). The
    training augmentation is ``random_resized_crop`` (torchvision's ``RandomResizedCrop``
    defaults, back to ``image_size``, + flip), the ImageNet recipe; ``data.augment`` picks
    another. Per-channel statistics are computed from the training images.

    The decoded arrays are cached in the folder holding the training folder, as
    ``robustlab-cache-<size>[-grey].npz`` (written atomically; reused while every file's path,
    size and modification time are unchanged; delete it to force a rebuild).

    Args:
        root: the data root, holding ``train/`` and ``val/`` (or ``test/``).
        download: not supported (there is nothing to download).
        train_dir, test_dir: the two folders, relative to ``root`` unless absolute (default:
            ``train``; ``val``, else ``test``).
        image_size: the side the images are resized (and centre-cropped) to.
        grayscale: decode to one channel instead of RGB.
        cache: read and write the decoded-array cache.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError("data.options.image_size", image_size, "a positive integer")
    trains = _directory(root, train_dir, ("train",))
    tests = _directory(root, test_dir, ("val", "test"))

    def find() -> tuple[Path, Path] | None:
        train = next((d for d in trains if d.is_dir() and _classes(d)), None)
        test = next((d for d in tests if d.is_dir() and _classes(d)), None)
        return None if train is None or test is None else (train, test)

    expected = [f"{trains[0]}/<class>/<image>", f"{' or '.join(map(str, tests))}/<class>/<image>"]
    train_path, test_path = locate(
        "image_folder", root, find, expected, _SOURCE, download=download, fetch=None
    )
    classes = _classes(train_path)
    train_paths, train_y = _files(train_path, classes)
    test_paths, test_y = _files(test_path, classes)
    for folder, paths in ((train_path, train_paths), (test_path, test_paths)):
        if not paths:
            raise DataNotFoundError(
                f"{folder}: no image files in its class folders ({', '.join(EXTENSIONS)})"
            )
    fingerprint = _fingerprint([*train_paths, *test_paths], image_size, grayscale)
    cache_path = (
        train_path.parent / f"robustlab-cache-{image_size}{'-grey' if grayscale else ''}.npz"
    )
    arrays = _read_cache(cache_path, fingerprint) if cache else None
    if arrays is None:
        image = pillow("image_folder")
        train_x = decode_images(image, train_paths, image_size, grayscale=grayscale)
        mean, std = channel_stats(torch.from_numpy(train_x))
        arrays = {
            "version": np.asarray(_CACHE_VERSION),
            "fingerprint": np.asarray(fingerprint),
            "classes": np.asarray(classes),
            "train_x": train_x,
            "train_y": train_y,
            "test_x": decode_images(image, test_paths, image_size, grayscale=grayscale),
            "test_y": test_y,
            "mean": np.asarray(mean),
            "std": np.asarray(std),
        }
        if cache:
            write_cache(cache_path, arrays, "image_folder")
    return from_numpy(
        "image_folder",
        (arrays["train_x"], arrays["train_y"]),
        (arrays["test_x"], arrays["test_y"]),
        len(classes),
        RANDOM_RESIZED_CROP,
        mean=arrays["mean"].tolist(),
        std=arrays["std"].tolist(),
    )
