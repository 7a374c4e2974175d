"""scikit-learn's handwritten digits: the embedded default dataset (no download needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError
from ._base import DATASETS, NO_AUGMENT, ImageDataset, from_numpy

# The split is fixed (not the run's seed) so every run, whatever its seed, tests on the same points.
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


def digits_file() -> Path:
    """The CSV scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``).

    Located without importing scikit-learn, whose import costs seconds that a short run notices.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "data.name='digits' needs scikit-learn (pip install scikit-learn), which ships the data"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(
            f"data.name='digits': {path} is missing from the scikit-learn installation"
        )
    return path


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split that keeps each class's share in both parts."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = round(test_fraction * len(members))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register("digits")
def load_digits(root: Path | None = None, download: bool = False) -> ImageDataset:
    """UCI handwritten digits as shipped in scikit-learn: 1,797 grey 8x8 images, 10 classes.

    Pixel values 0..16 are scaled to 0..255. The train/test split is stratified and seeded
    (1,438 train / 359 test), identical in every run.
    """
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float64)
    images = np.rint(table[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    train, test = stratified_split(labels, _TEST_FRACTION, _SPLIT_SEED)
    return from_numpy(
        "digits", (images[train], labels[train]), (images[test], labels[test]), 10, NO_AUGMENT
    )
