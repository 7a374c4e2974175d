"""Decoding folders of image files (Pillow) into uint8 arrays, and the decoded-array cache that
spares the next load the decoding: shared by tiny_imagenet and image_folder."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import DataFormatError, RobustlabError

# Pillow releases the GIL while it decodes, so threads decode in parallel.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


def pillow(owner: str) -> ModuleType:
    """``PIL.Image``, or a one-line error naming what needs it (Pillow is optional: [images])."""
    try:
        from PIL import Image
    except ImportError:
        raise RobustlabError(
            f"{owner}: decoding its image files needs Pillow (pip install pillow)"
        ) from None
    return Image


def _decode_one(
    image_module: ModuleType, path: Path, size: int | None, mode: str, resize: bool
) -> np.ndarray:
    """One image as H x W x C uint8 (C = 3 for RGB, 1 for L)."""
    try:
        with image_module.open(path) as image:
            image = image.convert(mode)
            if resize and size is not None and image.size != (size, size):
                image = _resize_center_crop(image_module, image, size)
            pixels = np.asarray(image)
    except OSError as exc:  # missing file, or not an image (PIL.UnidentifiedImageError)
        raise DataFormatError(f"{path}: cannot decode ({exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if size is not None and pixels.shape[:2] != (size, size):
        raise DataFormatError(
            f"{path}: image is {pixels.shape[1]} x {pixels.shape[0]}, expected {size} x {size}"
        )
    return pixels


def _resize_center_crop(image_module: ModuleType, image: object, size: int) -> object:
    """torchvision's ``Resize(size)`` then ``CenterCrop(size)``: the shorter side scaled to
    ``size`` (bilinear, with Pillow's antialiasing when shrinking), the centre square kept."""
    width, height = image.size  # type: ignore[attr-defined]
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, image_module.BILINEAR)  # type: ignore[attr-defined]
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))  # type: ignore[attr-defined]


def decode_images(
    image_module: ModuleType,
    paths: Sequence[Path],
    size: int,
    *,
    grayscale: bool = False,
    resize: bool = True,
) -> np.ndarray:
    """The images at ``paths`` as uint8 N x C x size x size (C = 3, or 1 with ``grayscale``).

    Every image is converted to RGB (or L); with ``resize`` its shorter side is scaled to
    ``size`` and the centre square kept, otherwise an image of another size is refused.

    Raises:
        DataFormatError: a file that is not an image, or (without ``resize``) of another size.
    """
    mode = "L" if grayscale else "RGB"
    channels = 1 if grayscale else 3
    images = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def decode(item: tuple[int, Path]) -> None:
        index, path = item
        images[index] = _decode_one(image_module, path, size, mode, resize).transpose(2, 0, 1)

    if len(paths) < 64 or _DECODE_THREADS == 1:
        for item in enumerate(paths):
            decode(item)
    else:
        with ThreadPoolExecutor(_DECODE_THREADS) as pool:
            for _ in pool.map(decode, enumerate(paths), chunksize=256):
                pass  # consume, so the first error is raised here
    return images


def write_cache(path: Path, arrays: dict[str, np.ndarray], owner: str) -> None:
    """Write the decoded-array cache atomically (temporary file, then rename); skip it, with a
    warning, if that fails (a read-only data folder only costs the next load its decoding)."""
    if not os.access(path.parent, os.W_OK):
        return
    temporary: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = Path(file.name)
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # NamedTemporaryFile creates it private (0600)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        warnings.warn(
            f"{owner}: could not write the decoded-image cache {path} ({exc}); "
            "the image files will be decoded again on the next load",
            stacklevel=3,
        )
