"""Finding a dataset's official files under the data root, and fetching them with torchvision.

Every file-format loader (CIFAR, SVHN, MNIST, Tiny-ImageNet) goes through :func:`locate`, so
the "files missing" and "cannot download" messages read the same for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from ..errors import DataNotFoundError

# fetch(torchvision.datasets, root) downloads a dataset into root in its official layout.
Fetch = Callable[[ModuleType, Path], object]
T = TypeVar("T")

# torch 2.x pairs with torchvision 0.(minor + 15).patch (torch 2.3.1 <-> torchvision 0.18.1;
# the pairs are listed at https://github.com/pytorch/vision#installation); the local version
# (+cpu, +cu126, +rocm6.2, +xpu) names the wheel index the build comes from.
_TORCH_RELEASE = re.compile(r"^2\.(\d+)\.(\d+)(?:\+(cpu|cu\d+|rocm[\d.]+|xpu))?$")
TORCH_WHEEL_INDEX = "https://download.pytorch.org/whl"


def torchvision_install_hint(torch_version: str | None = None) -> str:
    """The ``pip`` command installing the torchvision build that matches the installed torch.

    A plain ``pip install torchvision`` takes the newest torchvision from PyPI, which pins the
    newest torch: on a CPU machine that replaces the CPU torch with a multi-GB CUDA build.

    >>> torchvision_install_hint("2.13.0+cpu")
    'pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu'
    """
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    match = _TORCH_RELEASE.match(torch_version)
    if match is None:  # a nightly, a source build, a future major version
        return (
            f"the torchvision build matching torch {torch_version} "
            "(https://github.com/pytorch/vision#installation)"
        )
    minor, patch, local = match.groups()
    command = f"pip install torchvision==0.{int(minor) + 15}.{patch}"
    return f"{command} --index-url {TORCH_WHEEL_INDEX}/{local}" if local else command


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
        hint = (
            f"; or pass --download, with torchvision installed: {torchvision_install_hint()}"
            if fetch is not None
            else ""
        )
        # A relative root is read from the working directory: say which, it may not be the
        # one the files are under.
        where = "" if root.is_absolute() else f" (in the working directory {Path.cwd()})"
        raise DataNotFoundError(
            f"data.root={str(root)!r}{where}: {dataset} needs {files} "
            f"(official files: {source}{hint})"
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
            f"data.download=True: --download needs torchvision, the build matching this torch: "
            f"{torchvision_install_hint()}; or download {source} and unpack it under "
            f"{str(root)!r} so that {files} exist"
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
