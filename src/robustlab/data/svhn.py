"""SVHN (Street View House Numbers), cropped-digit format, from the official MATLAB files.

Netzer et al., "Reading Digits in Natural Images with Unsupervised Feature Learning", 2011.
http://ufldl.stanford.edu/housenumbers/
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import DataFormatError
from ._base import CROP_FLIP, DATASETS, ImageDataset, from_numpy
from ._download import first_directory_with, locate

_SOURCE = "http://ufldl.stanford.edu/housenumbers/"


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels (0..9) of one ``*_32x32.mat`` file.

    The file holds ``X``, 32 x 32 x 3 x N (height, width, channel, index: MATLAB's
    column-major layout), and ``y``, N x 1 with the digit 0 stored as label 10.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        # NotImplementedError: a MATLAB v7.3 (HDF5) file, which the official files are not.
        raise DataFormatError(f"{path}: not an SVHN MATLAB v5 file ({exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise DataFormatError(f"{path}: expected variables X and y, found {sorted(mat)}")
    images, labels = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataFormatError(
            f"{path}: X is {images.dtype} {images.shape}, expected uint8 32 x 32 x 3 x N"
        )
    if len(labels) != images.shape[3]:
        raise DataFormatError(f"{path}: {images.shape[3]} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise DataFormatError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 1..10")
    labels[labels == 10] = 0
    return images.transpose(3, 2, 0, 1), labels


@DATASETS.register("svhn")
def load_svhn(root: Path, download: bool = False, extra: bool = False) -> ImageDataset:
    """SVHN: 73,257 training and 26,032 test 32 x 32 colour digits, 10 classes.

    Reads ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (or the same under
    ``root/svhn``). Label 10 in the files is the digit 0 and becomes class 0. Per-channel
    statistics are computed from the training images (including ``extra`` when it is used).

    Args:
        root: the data root.
        download: fetch the files with torchvision when they are missing.
        extra: add the 531,131 "extra" images of ``extra_32x32.mat`` to the training set.
    """
    splits = ["train", "test", *(["extra"] if extra else [])]
    names = [f"{split}_32x32.mat" for split in splits]
    candidates = [root, root / "svhn"]

    def fetch(datasets: ModuleType, path: Path) -> None:
        for split in splits:
            datasets.SVHN(str(path), split=split, download=True)

    directory = locate(
        "svhn",
        root,
        lambda: first_directory_with(candidates, names),
        [root / name for name in names],
        _SOURCE,
        download=download,
        fetch=fetch,
    )
    train = _read_mat(directory / "train_32x32.mat")
    if extra:
        more = _read_mat(directory / "extra_32x32.mat")
        train = (np.concatenate([train[0], more[0]]), np.concatenate([train[1], more[1]]))
    test = _read_mat(directory / "test_32x32.mat")
    return from_numpy("svhn", train, test, 10, CROP_FLIP)
