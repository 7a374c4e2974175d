"""CIFAR-10 and CIFAR-100 from the official python-version pickles.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ._base import CROP_FLIP, DATASETS, ImageDataset, from_numpy
from ._download import Fetch, first_directory_with, locate

try:  # numpy >= 2 (numpy 1.x pickles name numpy.core, which numpy 2 only keeps as a shim)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_IMAGE_BYTES = 3 * 32 * 32


def _latin1(text: str, encoding: str) -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1").
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected codec {encoding!r}")
    return codecs.encode(text, encoding)


# The globals CIFAR pickles reference: the official files (Python 2, numpy 1.x) name only
# numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; copies re-pickled by
# Python 3 may name the others. Anything else is refused: unpickling arbitrary globals from a
# data directory would run arbitrary code.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one CIFAR pickle.

    Each row of ``data`` is 3,072 bytes: the 1,024 red values of the 32 x 32 image in row-major
    order, then green, then blue, so the reshape to (3, 32, 32) is exactly CHW.
    """
    try:
        with open(path, "rb") as file:
            # encoding="bytes": the files come from Python 2, whose str keys become bytes.
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{path}: not a CIFAR python-version pickle ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataFormatError(
            f"{path}: expected a dict with keys b'data' and {label_key!r}, found {keys}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        raise DataFormatError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 N x {_IMAGE_BYTES}"
        )
    if labels.shape != (len(data),):
        raise DataFormatError(f"{path}: {len(data)} images but {labels.shape} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load(
    name: str,
    root: Path,
    download: bool,
    folder: str,
    train_files: Sequence[str],
    test_file: str,
    label_key: bytes,
    num_classes: int,
    stats: tuple[tuple[float, float, float], tuple[float, float, float]],
    source: str,
    fetch: Fetch,
) -> ImageDataset:
    names = [*train_files, test_file]
    candidates = [root / folder]
    directory = locate(
        name,
        root,
        lambda: first_directory_with(candidates, names),
        [root / folder / file for file in names],
        source,
        download=download,
        fetch=fetch,
    )
    batches = [_read_batch(directory / file, label_key, num_classes) for file in train_files]
    train = (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))
    test = _read_batch(directory / test_file, label_key, num_classes)
    return from_numpy(name, train, test, num_classes, CROP_FLIP, mean=stats[0], std=stats[1])


@DATASETS.register("cifar10")
def load_cifar10(root: Path, download: bool = False) -> ImageDataset:
    """CIFAR-10: 50,000 training and 10,000 test 32 x 32 colour images in 10 classes.

    Reads ``root/cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``
    (the official cifar-10-python.tar.gz, unpacked). Per-channel statistics are the standard
    CIFAR-10 training-set values.

    Args:
        root: the data root.
        download: fetch the files with torchvision when they are missing.
    """
    return _load(
        "cifar10",
        root,
        download,
        folder="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        label_key=b"labels",
        num_classes=10,
        stats=((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        fetch=lambda datasets, path: datasets.CIFAR10(str(path), download=True),
    )


@DATASETS.register("cifar100")
def load_cifar100(root: Path, download: bool = False) -> ImageDataset:
    """CIFAR-100: 50,000 training and 10,000 test 32 x 32 colour images in 100 fine classes.

    Reads ``root/cifar-100-python/train`` and ``test`` (the official cifar-100-python.tar.gz,
    unpacked), with the fine labels. Per-channel statistics are the standard CIFAR-100
    training-set values.

    Args:
        root: the data root.
        download: fetch the files with torchvision when they are missing.
    """
    return _load(
        "cifar100",
        root,
        download,
        folder="cifar-100-python",
        train_files=["train"],
        test_file="test",
        label_key=b"fine_labels",
        num_classes=100,
        stats=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        source="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        fetch=lambda datasets, path: datasets.CIFAR100(str(path), download=True),
    )
