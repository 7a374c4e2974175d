"""The ``--download`` hint names the torchvision build that matches the installed torch
(issue 8, point 16): a plain ``pip install torchvision`` replaces a CPU torch with a CUDA one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from robustlab.data import create_dataset
from robustlab.data._download import torchvision_install_hint
from robustlab.errors import DataNotFoundError


@pytest.mark.parametrize(
    ("torch_version", "command"),
    [
        (
            "2.13.0+cpu",
            "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu",
        ),
        (
            "2.5.1+cu124",
            "pip install torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu124",
        ),
        (
            "2.6.0+rocm6.2.4",
            "pip install torchvision==0.21.0 --index-url https://download.pytorch.org/whl/rocm6.2.4",
        ),
        ("2.3.1", "pip install torchvision==0.18.1"),  # a PyPI torch: PyPI's torchvision
    ],
)
def test_hint_pins_the_matching_build(torch_version: str, command: str) -> None:
    assert torchvision_install_hint(torch_version) == command


@pytest.mark.parametrize("torch_version", ["2.14.0.dev20260301+cpu", "3.0.0", "2.7.0a0+gitabc"])
def test_hint_for_an_unknown_build_names_the_compatibility_table(torch_version: str) -> None:
    hint = torchvision_install_hint(torch_version)
    assert "pip install" not in hint
    assert torch_version in hint and "github.com/pytorch/vision" in hint


def _never_plain_pip(message: str) -> None:
    # "pip install torchvision" must be followed by a pinned version, never end there.
    for match in re.finditer(r"pip install torchvision(\S*)", message):
        assert match.group(1).startswith("=="), message


@pytest.mark.parametrize("download", [False, True], ids=["missing", "no-torchvision"])
def test_messages_name_the_installed_torchs_build_and_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not importable, installed or not
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(DataNotFoundError) as info:
        create_dataset("cifar10", root=tmp_path, download=download)
    message = str(info.value)
    _never_plain_pip(message)
    assert (
        "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu"
        in message
    )
    # ...and the manual way: the official archive and the files expected under data.root.
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message


def test_a_relative_root_names_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data.root is read from the working directory: the message says which."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        create_dataset("cifar10", root=Path("data"))
    assert f"data.root='data' (in the working directory {tmp_path})" in str(info.value)
