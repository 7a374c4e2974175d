"""Finding a dataset's official files under the data root, and fetching them with torchvision.

Every file-format loader (CIFAR, SVHN, MNIST, Tiny-ImageNet) goes through :func:`locate`, so
the "files missing" and "cannot download" messages read the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from ..errors import DataNotFoundError

# fetch(torchvision.datasets, root) downloads a dataset into root in its official layout.
Fetch = Callable[[ModuleType, Path], object]
T = TypeVar("T")


def first_directory_with(candidates: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first directory among ``candidates`` holding every file in ``names``, else None."""
    for directory in candidates:
        if all((directory / name).is_file() for name in names):
            return directory
    return None


def locate(
    dataset: str,
    root: Path,
    find: Callable[[], T | None],
    expected: Sequence[Path | str],
    source: str,
    *,
    download: bool,
    fetch: Fetch | None,
) -> T:
    """Where ``dataset``'s official files are (``find()``'s answer), fetching them if asked.

    Files already present are used as they are, even with ``download=True``: nothing is
    fetched twice.

    Args:
        dataset: registry name, for messages.
        root: the data root.
        find: returns where the official files are (a directory, or a path per file), or
            None when any is missing.
        expected: the files expected under ``root``, as the user should see them.
        source: where the official files come from (a URL).
        download: fetch missing files with torchvision.
        fetch: downloads the files into ``root`` given ``torchvision.datasets``; None when
            torchvision has no class for this dataset.

    Raises:
        DataNotFoundError: the files are missing and were not (or could not be) downloaded;
            the message names the expected files and their source.
    """
    found = find()
    if found is not None:
        return found
    files = ", ".join(str(path) for path in expected)
    if not download:
        hint = "; or pass --download with torchvision installed" if fetch is not None else ""
        raise DataNotFoundError(
            f"data.root={str(root)!r}: {dataset} needs {files} (official files: {source}{hint})"
        )
    if fetch is None:
        raise DataNotFoundError(
            f"data.download=True: {dataset} cannot be downloaded automatically; "
            f"download {source} and unpack it so that {files} exist"
        )
    try:
        from torchvision import datasets
    except ImportError:
        raise DataNotFoundError(
            "data.download=True: --download needs torchvision (pip install torchvision); "
            f"or place the official files: {files} (from {source})"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch(datasets, root)
    except (OSError, RuntimeError, ValueError) as exc:  # network errors, checksum mismatches
        raise DataNotFoundError(
            f"data.download=True: downloading {dataset} into {str(root)!r} failed ({exc}); "
            f"or place the official files: {files} (from {source})"
        ) from exc
    found = find()
    if found is None:
        raise DataNotFoundError(
            f"data.download=True: torchvision downloaded {dataset} but {files} are still missing"
        )
    return found
