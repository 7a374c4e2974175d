"""The official dataset file formats: tiny files written exactly as published, then loaded.

Each test writes a few images in the format the dataset's authors distribute (CIFAR pickles,
SVHN MATLAB files, MNIST idx files, the Tiny-ImageNet folder of JPEGs) and checks that
``create_dataset`` returns them pixel for pixel, in NCHW order, with the right labels.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from robustlab.data import create_dataset
from robustlab.errors import DataFormatError, DataNotFoundError, RobustlabError

# ---------------------------------------------------------------- CIFAR


class _Python2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the official CIFAR files.

    Protocol 2, ``str`` and ``bytes`` as 8-bit strings (which only load with
    ``encoding="bytes"``), and numpy's array constructor under its numpy 1.x module name
    ``numpy.core.multiarray``, which numpy 2 no longer uses.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file) -> None:
        super().__init__(file, protocol=2)

    def save_8bit_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_8bit_string
    dispatch[bytes] = save_8bit_string

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _write_python2_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        _Python2Pickler(file).dump(obj)


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def test_python2_pickler_writes_the_official_opcodes(tmp_path: Path) -> None:
    _write_python2_pickle(tmp_path / "batch", {b"data": np.zeros((1, 3072), np.uint8)})
    raw = (tmp_path / "batch").read_bytes()
    assert raw.startswith(b"\x80\x02}")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"U\x04data" in raw  # SHORT_BINSTRING key, as Python 2 wrote it


def test_cifar10_pixels_planes_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 6):
        data, labels = _cifar_images(rng, 2), [i % 10, (i + 3) % 10]
        _write_python2_pickle(
            folder / f"data_batch_{i}",
            {b"batch_label": f"training batch {i} of 5", b"labels": labels, b"data": data},
        )
        train_data.append(data)
        train_labels += labels
    test_data = _cifar_images(rng, 3)
    _write_python2_pickle(
        folder / "test_batch",
        {b"batch_label": "testing batch 1 of 1", b"labels": [9, 0, 4], b"data": test_data},
    )
    _write_python2_pickle(folder / "batches.meta", {b"label_names": ["airplane"] * 10})

    data = create_dataset("cifar10", root=tmp_path)

    assert data.train_x.shape == (10, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (3, 3, 32, 32) and data.test_x.dtype == torch.uint8
    first = train_data[0][0]
    # Each row is the red plane (1,024 values, row-major), then green, then blue.
    assert np.array_equal(data.train_x[0, 0].numpy(), first[:1024].reshape(32, 32))
    assert np.array_equal(data.train_x[0, 1].numpy(), first[1024:2048].reshape(32, 32))
    assert np.array_equal(data.train_x[0, 2].numpy(), first[2048:].reshape(32, 32))
    assert data.train_x[0, 0, 0, 1].item() == first[1]  # row 0, column 1 of red
    assert data.train_x[0, 0, 1, 0].item() == first[32]  # row 1, column 0 of red
    assert np.array_equal(data.train_x.numpy(), np.concatenate(train_data).reshape(-1, 3, 32, 32))
    assert np.array_equal(data.test_x.numpy(), test_data.reshape(-1, 3, 32, 32))
    assert data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == train_labels
    assert data.test_y.tolist() == [9, 0, 4]
    assert data.num_classes == 10 and data.augment == "crop_flip"
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2471, 0.2435, 0.2616)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar100_fine_labels_python3_pickles(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _cifar_images(rng, 4), _cifar_images(rng, 2)
    for name, data, fine in (("train", train, [0, 99, 50, 7]), ("test", test, [42, 1])):
        batch = {b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * len(fine)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))

    data = create_dataset("cifar100", root=tmp_path)

    assert data.train_x.shape == (4, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    assert np.array_equal(data.train_x[1, 2].numpy(), train[1, 2048:].reshape(32, 32))
    assert np.array_equal(data.test_x.numpy(), test.reshape(-1, 3, 32, 32))
    assert data.train_y.tolist() == [0, 99, 50, 7] and data.test_y.tolist() == [42, 1]
    assert data.num_classes == 100 and data.augment == "crop_flip"
    assert data.mean == (0.5071, 0.4865, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({b"data": _RunsCode(), b"fine_labels": []}),  # a global outside numpy
        pickle.dumps({b"data": np.zeros((1, 100), np.uint8), b"fine_labels": [0]}),
        pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}),  # CIFAR-10 key
        pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]}),
        b"not a pickle",
    ],
    ids=["foreign-global", "bad-shape", "no-fine-labels", "label-range", "garbage"],
)
def test_cifar_bad_pickle_is_a_format_error(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(content)
    (folder / "test").write_bytes(content)
    with pytest.raises(DataFormatError, match="train"):
        create_dataset("cifar100", root=tmp_path)


# ---------------------------------------------------------------- SVHN


def _svhn_mat(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """``images`` N x 32 x 32 x 3 -> the official X (32 x 32 x 3 x N) and y (N x 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(images.transpose(1, 2, 3, 0))
    scipy.io.savemat(path, {"X": x, "y": np.asarray(labels, dtype=np.uint8)[:, None]})


@pytest.mark.parametrize("subdir", ["", "svhn"])
def test_svhn_layout_and_label_10_is_zero(tmp_path: Path, subdir: str) -> None:
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # N x H x W x C
    test = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    _svhn_mat(tmp_path / subdir / "train_32x32.mat", train, [10, 1, 5])
    _svhn_mat(tmp_path / subdir / "test_32x32.mat", test, [3, 10])

    data = create_dataset("svhn", root=tmp_path)

    assert data.train_x.shape == (3, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert np.array_equal(data.train_x.numpy(), train.transpose(0, 3, 1, 2))
    assert np.array_equal(data.test_x.numpy(), test.transpose(0, 3, 1, 2))
    assert data.train_x[0, 0, 2, 5].item() == train[0, 2, 5, 0]  # red, row 2, column 5
    assert data.train_y.tolist() == [0, 1, 5] and data.test_y.tolist() == [3, 0]
    assert data.num_classes == 10 and data.augment == "crop_flip"
    expected_mean = train.reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(data.mean, expected_mean)


def test_svhn_extra_joins_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    _svhn_mat(tmp_path / "train_32x32.mat", images[:2], [1, 2])
    _svhn_mat(tmp_path / "test_32x32.mat", images[:1], [3])
    _svhn_mat(tmp_path / "extra_32x32.mat", images[2:], [10, 4])

    assert len(create_dataset("svhn", root=tmp_path).train_y) == 2
    data = create_dataset("svhn", root=tmp_path, extra=True)
    assert data.train_y.tolist() == [1, 2, 0, 4]
    assert np.array_equal(data.train_x.numpy(), images.transpose(0, 3, 1, 2))


def test_svhn_extra_missing_names_it(tmp_path: Path) -> None:
    images = np.zeros((1, 32, 32, 3), np.uint8)
    _svhn_mat(tmp_path / "train_32x32.mat", images, [1])
    _svhn_mat(tmp_path / "test_32x32.mat", images, [1])
    with pytest.raises(DataNotFoundError, match=r"extra_32x32\.mat"):
        create_dataset("svhn", root=tmp_path, extra=True)


# ---------------------------------------------------------------- MNIST

_MNIST_STEMS = {
    "train-images-idx3-ubyte": 0x803,
    "train-labels-idx1-ubyte": 0x801,
    "t10k-images-idx3-ubyte": 0x803,
    "t10k-labels-idx1-ubyte": 0x801,
}


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(
    folder: Path, arrays: dict[str, np.ndarray], gz: bool, magic: int | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, file_magic in _MNIST_STEMS.items():
        raw = _idx_bytes(arrays[stem], file_magic if magic is None else magic)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


def _mnist_arrays(seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([5, 0, 4, 1, 9], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2], np.uint8),
    }


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("subdir", ["", "MNIST/raw", "mnist"])
def test_mnist_idx_raw_and_gzipped(tmp_path: Path, gz: bool, subdir: str) -> None:
    arrays = _mnist_arrays()
    _write_mnist(tmp_path / subdir, arrays, gz)

    data = create_dataset("mnist", root=tmp_path)

    assert data.train_x.shape == (5, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (2, 1, 28, 28)
    assert np.array_equal(data.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert data.train_y.tolist() == [5, 0, 4, 1, 9] and data.test_y.tolist() == [7, 2]
    assert data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.augment == "none"
    assert data.mean == (0.1307,) and data.std == (0.3081,)


def test_mnist_bad_magic_names_the_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, _mnist_arrays(), gz=True, magic=0x801)  # images marked as labels
    with pytest.raises(
        DataFormatError, match=r"train-images-idx3-ubyte\.gz.*0x00000801.*0x00000803"
    ):
        create_dataset("mnist", root=tmp_path)


def test_mnist_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, _mnist_arrays(), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="t10k-images-idx3-ubyte"):
        create_dataset("mnist", root=tmp_path)


def test_mnist_not_gzip_is_a_format_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, _mnist_arrays(), gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz"):
        create_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------- Tiny-ImageNet

# Not in sorted order: the class index must follow the lines of wnids.txt.
_WNIDS = ["n09999999", "n01443537", "n04067472"]
_COLOURS = {"n09999999": (200, 30, 40), "n01443537": (20, 180, 60), "n04067472": (50, 70, 220)}


def _jpeg(path: Path, colour: tuple[int, ...], mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (64, 64), colour if mode == "RGB" else colour[0]).save(path, "JPEG", quality=95)


def _write_tiny_imagenet(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in _WNIDS))
    for wnid in _WNIDS:
        images = folder / "train" / wnid / "images"
        for i in range(2):
            _jpeg(images / f"{wnid}_{i}.JPEG", _COLOURS[wnid])
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    _jpeg(folder / "train" / _WNIDS[1] / "images" / f"{_WNIDS[1]}_2.JPEG", (128,), mode="L")
    annotations = []
    for i, wnid in enumerate([_WNIDS[2], _WNIDS[0]]):
        _jpeg(folder / "val" / "images" / f"val_{i}.JPEG", _COLOURS[wnid])
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    (folder / "test" / "images").mkdir(parents=True)  # unlabelled: not used
    return folder


def _assert_tiny_imagenet(data) -> None:
    assert data.train_x.shape == (7, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (2, 3, 64, 64)
    assert data.train_y.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert data.test_y.tolist() == [2, 0]
    assert data.num_classes == 3 and data.augment == "crop_flip"
    expected = [_COLOURS[_WNIDS[label]] for label in data.train_y.tolist()]
    expected[4] = (128, 128, 128)  # the greyscale JPEG (n01443537_2), converted to RGB
    mean_colour = data.train_x.double().mean(dim=(2, 3))
    assert torch.allclose(mean_colour, torch.tensor(expected, dtype=torch.float64), atol=3)
    test_colour = data.test_x.double().mean(dim=(2, 3))
    want = torch.tensor([_COLOURS[_WNIDS[2]], _COLOURS[_WNIDS[0]]], dtype=torch.float64)
    assert torch.allclose(test_colour, want, atol=3)


def test_tiny_imagenet_folder_and_cache_reuse(tmp_path: Path, monkeypatch) -> None:
    folder = _write_tiny_imagenet(tmp_path)

    first = create_dataset("tiny_imagenet", root=tmp_path)
    _assert_tiny_imagenet(first)
    cache = folder / "robustlab-cache.npz"
    assert cache.is_file()
    assert not list(folder.glob("*.tmp"))  # the temporary file was renamed, not left behind

    import PIL.Image

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = create_dataset("tiny_imagenet", root=tmp_path)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert second.mean == pytest.approx(first.mean) and second.std == pytest.approx(first.std)


def test_tiny_imagenet_stale_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    folder = _write_tiny_imagenet(tmp_path)
    create_dataset("tiny_imagenet", root=tmp_path)
    cache = folder / "robustlab-cache.npz"
    stamp = cache.stat().st_mtime
    os.utime(folder / "wnids.txt", (stamp + 10, stamp + 10))  # wnids.txt now newer

    import PIL.Image

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    _assert_tiny_imagenet(create_dataset("tiny_imagenet", root=tmp_path))
    assert len(opened) == 9  # every JPEG decoded again


def test_tiny_imagenet_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    folder = _write_tiny_imagenet(tmp_path)
    (folder / "robustlab-cache.npz").write_bytes(b"not a zip file")
    _assert_tiny_imagenet(create_dataset("tiny_imagenet", root=tmp_path))
    _assert_tiny_imagenet(create_dataset("tiny_imagenet", root=tmp_path))  # from the new cache


def test_tiny_imagenet_without_cache_writes_none(tmp_path: Path) -> None:
    folder = _write_tiny_imagenet(tmp_path)
    _assert_tiny_imagenet(create_dataset("tiny_imagenet", root=tmp_path, cache=False))
    assert not (folder / "robustlab-cache.npz").exists()


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path: Path) -> None:
    folder = _write_tiny_imagenet(tmp_path)
    with open(folder / "val" / "val_annotations.txt", "a") as file:
        file.write("val_9.JPEG\tn00000000\t0\t0\t63\t63\n")
    with pytest.raises(DataFormatError, match=r"val_annotations\.txt, line 3"):
        create_dataset("tiny_imagenet", root=tmp_path)


def test_tiny_imagenet_needs_pillow_to_decode(tmp_path: Path, monkeypatch) -> None:
    _write_tiny_imagenet(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.raises(RobustlabError, match="pip install pillow"):
        create_dataset("tiny_imagenet", root=tmp_path)


# ---------------------------------------------------------------- missing files, download

_MISSING = {
    "cifar10": [
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/test_batch",
        "cifar-10-python.tar.gz",
    ],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python.tar.gz"],
    "svhn": ["train_32x32.mat", "test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/"],
    "mnist": [
        "train-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
        "yann.lecun.com/exdb/mnist",
    ],
    "tiny_imagenet": [
        "tiny-imagenet-200/wnids.txt",
        "val/val_annotations.txt",
        "tiny-imagenet-200.zip",
    ],
}


@pytest.mark.parametrize("name", sorted(_MISSING))
def test_missing_files_name_the_expected_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataNotFoundError) as info:
        create_dataset(name, root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for part in _MISSING[name]:
        assert part in message
    assert str(tmp_path) in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist"])
def test_download_without_torchvision_says_how(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not importable, installed or not
    with pytest.raises(
        RobustlabError, match=r"--download needs torchvision, the build matching this torch"
    ) as info:
        create_dataset(name, root=tmp_path, download=True)
    assert _MISSING[name][0] in str(info.value)


def test_download_is_skipped_when_files_are_present(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    _write_mnist(tmp_path, _mnist_arrays(), gz=False)
    assert len(create_dataset("mnist", root=tmp_path, download=True).train_y) == 5


def test_download_uses_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    calls = []

    class FakeMNIST:
        def __init__(self, root: str, download: bool = False) -> None:
            calls.append((root, download))
            _write_mnist(Path(root) / "MNIST" / "raw", _mnist_arrays(), gz=True)

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = FakeMNIST
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)

    root = tmp_path / "new"
    data = create_dataset("mnist", root=root, download=True)
    assert calls == [(str(root), True)]
    assert data.train_y.tolist() == [5, 0, 4, 1, 9]


def test_tiny_imagenet_download_points_to_the_zip(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"cannot be downloaded.*tiny-imagenet-200\.zip"):
        create_dataset("tiny_imagenet", root=tmp_path, download=True)
