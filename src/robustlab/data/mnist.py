"""MNIST from the official idx files (raw or gzipped).

LeCun et al., "Gradient-Based Learning Applied to Document Recognition", 1998.
http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from ..errors import DataFormatError
from ._base import DATASETS, NO_AUGMENT, ImageDataset, from_numpy
from ._download import locate

_SOURCE = (
    "http://yann.lecun.com/exdb/mnist/ or its mirror https://ossci-datasets.s3.amazonaws.com/mnist/"
)

# idx magic numbers: two zero bytes, the element type (0x08: unsigned byte), the number of dims.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in an idx file (gzipped if its name ends in ``.gz``).

    An idx file is a big-endian int32 magic number, one big-endian int32 per dimension, then
    the elements in row-major order.

    Raises:
        DataFormatError: the magic number is not ``magic``, or the file is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = bytearray(file.read())  # writable, so torch can share the memory
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        shown = "none (file too short)" if found is None else f"0x{found:08x}"
        raise DataFormatError(
            f"{path}: idx magic number is {shown}, expected 0x{magic:08x} "
            f"(official files: {_SOURCE})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != math.prod(dims):
        raise DataFormatError(
            f"{path}: header gives shape {dims} ({math.prod(dims)} values), file holds {body.size}"
        )
    return body.reshape(dims)


def _find(candidates: list[Path]) -> dict[str, Path] | None:
    """The four files, from the first directory holding each either raw or gzipped."""
    for directory in candidates:
        found = {}
        for key, stem in _FILES.items():
            # Prefer the raw file where both exist (torchvision keeps both): no decompression.
            path = next(
                (p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None
            )
            if path is None:
                break
            found[key] = path
        else:
            return found
    return None


def _split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataFormatError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataFormatError(
            f"{images_path}: holds no images (shape {images.shape}); expected the official "
            f"files ({_SOURCE})"
        )
    if len(labels) and labels.max() > 9:
        raise DataFormatError(f"{labels_path}: labels span 0..{labels.max()}, expected 0..9")
    return images[:, None], labels  # N x 1 x H x W


@DATASETS.register("mnist")
def load_mnist(root: Path, download: bool = False) -> ImageDataset:
    """MNIST: 60,000 training and 10,000 test 28 x 28 grey handwritten digits, 10 classes.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each raw or ``.gz``, from ``root``, ``root/MNIST/raw``
    (torchvision's layout) or ``root/mnist``. Per-channel statistics are the standard MNIST
    training-set values; no augmentation.

    Args:
        root: the data root.
        download: fetch the files with torchvision (into ``root/MNIST/raw``) when missing.
    """
    candidates = [root, root / "MNIST" / "raw", root / "mnist"]
    found = locate(
        "mnist",
        root,
        lambda: _find(candidates),
        [root / f"{stem}[.gz]" for stem in _FILES.values()],
        _SOURCE,
        download=download,
        fetch=lambda datasets, path: datasets.MNIST(str(path), download=True),
    )
    train = _split(found["train_images"], found["train_labels"])
    test = _split(found["test_images"], found["test_labels"])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataFormatError(
            f"{found['test_images']}: images are {test[0].shape[2:]}, "
            f"the training images {train[0].shape[2:]}"
        )
    return from_numpy("mnist", train, test, 10, NO_AUGMENT, mean=(0.1307,), std=(0.3081,))
