"""Extra pseudo-labelled training data (robust self-training), mixed into every training batch.

Carmon, Raghunathan, Schmidt, Liang & Duchi, "Unlabeled Data Improves Adversarial Robustness"
(NeurIPS 2019; code: yaircarmon/semisup-adv) train on CIFAR-10 plus 500K TinyImages labelled by
a standard classifier; Wu et al. (2021, Table 4, WAR†) train WAR on the same data. Their file is
a pickle of a dict with ``data`` (N x H x W x C uint8, as torchvision's ``CIFAR10.data``) and
``extrapolated_targets`` (N integer pseudo-labels); their ``SemiSupervisedSampler`` fills
``int(batch_size * unsup_fraction)`` of each batch (default 0.5) with extra images drawn with
replacement and the rest with the next labelled images of a fresh permutation, and defines an
epoch as as many batches as the labelled set alone would give.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from .loader import EpochBatches

IMAGES_KEY = "data"
LABELS_KEY = "extrapolated_targets"


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data`` and ``extrapolated_targets`` from an RST pickle or an ``.npz`` with those keys.

    A pickle can run code when it is read: load only files you made or trust (RST's own
    ``ti_500K_pseudo_labeled.pickle``). An ``.npz`` is read without pickle.
    """
    if not path.is_file():
        raise DataNotFoundError(
            f"data.extra={str(path)!r}: no such file (a pickle with '{IMAGES_KEY}' and "
            f"'{LABELS_KEY}', as yaircarmon/semisup-adv's ti_500K_pseudo_labeled.pickle)"
        )
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                content = {key: archive[key] for key in archive.files}
        else:
            with path.open("rb") as handle:
                content = pickle.load(handle)  # the RST format is a pickle (see above)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"data.extra={str(path)!r}: cannot read ({exc})") from None
    if not isinstance(content, dict) or IMAGES_KEY not in content or LABELS_KEY not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataFormatError(
            f"data.extra={str(path)!r}: expected a dict with '{IMAGES_KEY}' (N x H x W x C "
            f"uint8) and '{LABELS_KEY}' (N labels), found {found}"
        )
    return np.asarray(content[IMAGES_KEY]), np.asarray(content[LABELS_KEY])


def load_extra(
    path: str | Path, like: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The extra images as uint8 N x C x H x W (the layout of ``like``, the training images) and
    their pseudo-labels as int64.

    Raises:
        DataNotFoundError: no file at ``path``.
        DataFormatError: not the RST format, images of another shape than the training
            images, or labels outside ``[0, num_classes)``.
    """
    path = Path(path)
    images, labels = _read_arrays(path)
    channels, height, width = like.shape[1:]
    if images.ndim == 3 and channels == 1:  # greyscale stored as N x H x W
        images = images[..., None]
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != (height, width, channels)
    ):
        raise DataFormatError(
            f"data.extra={str(path)!r}: '{IMAGES_KEY}' is {images.dtype} of shape "
            f"{images.shape}; the training images need uint8 N x {height} x {width} x {channels}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(
            f"data.extra={str(path)!r}: '{LABELS_KEY}' has shape {labels.shape}; expected one "
            f"label per image ({len(images)})"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"data.extra={str(path)!r}: '{LABELS_KEY}' are {labels.dtype}, expected integers"
        )
    if len(labels) == 0:
        raise DataFormatError(f"data.extra={str(path)!r}: holds no images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataFormatError(
            f"data.extra={str(path)!r}: pseudo-labels in [{labels.min()}, {labels.max()}], "
            f"the data has {num_classes} classes"
        )
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(labels.astype(np.int64))


class MixedLoader(EpochBatches):
    """Batches of labelled and extra (pseudo-labelled) images, on the images' device.

    Each batch holds ``batch_size - int(batch_size * fraction)`` labelled images, the next ones
    of the epoch's permutation of the labelled set, filled up to ``batch_size`` with extra
    images drawn uniformly with replacement (when ``fraction > 0``), then shuffled within the
    batch and augmented as one batch: RST's ``SemiSupervisedSampler``. An epoch has as many
    batches as the labelled set alone would give (RST: ``ceil(50000 / batch_size)``), so it
    costs what an epoch without extra data does, and sees ``1 - fraction`` of the labelled set.

    Args:
        images, labels: the labelled training set (uint8 N x C x H x W, int64 N).
        extra_images, extra_labels: the extra set, on the same device.
        batch_size: images per batch, labelled and extra together.
        fraction: share of each batch taken from the extra set, in [0, 1).
        augment: a registered augmentation name.
        seed: base seed; epoch ``e`` is reproducible from ``(seed, e)`` as with
            :class:`~robustlab.data.DeviceLoader`.

    Yields:
        ``x`` float32 in [0, 1] and ``y`` int64.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        extra_images: torch.Tensor,
        extra_labels: torch.Tensor,
        batch_size: int,
        *,
        fraction: float = 0.5,
        augment: str = "none",
        seed: int = 0,
    ) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        if images.dtype != torch.uint8 or extra_images.dtype != torch.uint8:
            raise TypeError("images must be uint8")
        super().__init__(images, labels, batch_size, augment, seed)
        self.extra_images, self.extra_labels = extra_images, extra_labels
        self.n_extra = int(batch_size * fraction)
        self.n_labelled = batch_size - self.n_extra

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, reproducible from ``(seed, epoch)``."""
        device = self.images.device
        generator = self.generator(epoch)
        order = torch.randperm(len(self.labels), generator=generator, device=device)
        # ceil(n / batch_size) chunks of n_labelled <= batch_size never run past the permutation
        # by a whole chunk: only the last may be short (and gets more extra images).
        for i in range(len(self)):
            labelled = order[i * self.n_labelled : (i + 1) * self.n_labelled]
            # RST fills a batch up to batch_size only when it mixes at all (fraction > 0).
            fill = self.batch_size - len(labelled) if self.n_extra else 0
            extra = torch.randint(
                0, len(self.extra_labels), (fill,), generator=generator, device=device
            )
            x = torch.cat([self.images[labelled], self.extra_images[extra]])
            y = torch.cat([self.labels[labelled], self.extra_labels[extra]])
            # RST: "this shuffle operation is very important, without it batch-norm /
            # DataParallel hell ensues" (a device's share of the batch must be mixed too).
            mix = torch.randperm(len(y), generator=generator, device=device)
            yield self.finish(x[mix], y[mix], generator)
