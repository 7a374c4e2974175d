"""scikit-learn's handwritten digits: the embedded default dataset (no download needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import DATASETS, NO_AUGMENT, ImageDataset, from_numpy

# The split is fixed (not the run's seed) so every run, whatever its seed, tests on the same points.
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


@DATASETS.register("digits")
def load_digits(root: Path | None = None, download: bool = False) -> ImageDataset:
    """UCI handwritten digits as shipped in scikit-learn: 1,797 grey 8x8 images, 10 classes.

    Pixel values 0..16 are scaled to 0..255. The train/test split is stratified and seeded
    (1,437 train / 360 test), identical in every run.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=labels
    )
    return from_numpy("digits", (x_train, y_train), (x_test, y_test), 10, NO_AUGMENT)
