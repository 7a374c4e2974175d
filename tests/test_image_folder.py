"""The generic image-folder dataset (class sub-folders, ImageNet-style) and the batched
random-resized-crop augmentation."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlab.cli.main import main
from robustlab.data import AUGMENTATIONS, create_dataset, random_resized_crop_boxes, resized_crop
from robustlab.errors import DataFormatError, DataNotFoundError

PIL = pytest.importorskip("PIL.Image")

RED, GREEN, BLUE = (200, 0, 0), (0, 180, 0), (0, 0, 160)


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(pixels).save(path)  # PNG: lossless, so colours are exact


def _solid(colour: tuple[int, int, int], width: int = 9, height: int = 9) -> np.ndarray:
    return np.tile(np.asarray(colour, np.uint8), (height, width, 1))


def _stripes(height: int = 6) -> np.ndarray:
    """18 x 6: red, green, blue thirds; the centre square (after no resize) is all green."""
    return np.concatenate([_solid(c, 6, height) for c in (RED, GREEN, BLUE)], axis=1)


def _write_folder(root: Path) -> Path:
    """train/cat (2 images, one non-square), train/dog (1); val/cat, val/dog (one each)."""
    _png(root / "train" / "dog" / "d0.png", _solid(BLUE))
    _png(root / "train" / "cat" / "c0.png", _solid(RED))
    _png(root / "train" / "cat" / "sub" / "c1.PNG", _stripes())  # nested, upper-case suffix
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _png(root / "val" / "dog" / "v0.png", _solid(BLUE, 12, 12))
    _png(root / "val" / "cat" / "v1.png", _solid(RED, 5, 7))
    return root


def test_image_folder_classes_sizes_and_centre_crop(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "imgs")
    data = create_dataset("image_folder", root=root, image_size=6)
    assert data.num_classes == 2  # cat = 0, dog = 1: sorted folder names, as ImageFolder
    assert data.train_x.shape == (3, 3, 6, 6) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0, 0, 1]  # cat/c0, cat/sub/c1, dog/d0
    assert data.test_y.tolist() == [0, 1]  # val/cat/v1, val/dog/v0
    colours = data.train_x.double().mean(dim=(2, 3))
    expected = torch.tensor([RED, GREEN, BLUE], dtype=torch.float64)  # the stripes' centre: green
    torch.testing.assert_close(colours, expected, atol=1.0, rtol=0)
    assert data.augment == "random_resized_crop"
    grey = create_dataset("image_folder", root=root, image_size=4, grayscale=True, cache=False)
    assert grey.train_x.shape == (3, 1, 4, 4)


def test_image_folder_cache_is_reused_then_rebuilt_when_a_file_changes(
    tmp_path: Path, monkeypatch
) -> None:
    root = _write_folder(tmp_path / "imgs")
    first = create_dataset("image_folder", root=root, image_size=6)
    cache = root / "robustlab-cache-6.npz"
    assert cache.is_file() and not list(root.glob("*.tmp"))
    opened: list[object] = []
    real_open = PIL.open
    monkeypatch.setattr(PIL, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    second = create_dataset("image_folder", root=root, image_size=6)
    assert opened == []  # from the cache
    assert torch.equal(first.train_x, second.train_x) and second.mean == pytest.approx(first.mean)
    changed = root / "train" / "dog" / "d0.png"
    _png(changed, _solid(GREEN))
    stamp = cache.stat().st_mtime + 5
    os.utime(changed, (stamp, stamp))
    third = create_dataset("image_folder", root=root, image_size=6)
    assert len(opened) == 5  # every image decoded again
    assert third.train_x[2].double().mean(dim=(1, 2)).tolist() == pytest.approx(GREEN, abs=1)


def test_image_folder_explicit_directories(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "imgs")
    (root / "val").rename(root / "holdout")
    data = create_dataset("image_folder", root=root, test_dir="holdout", image_size=4)
    assert data.test_y.tolist() == [0, 1]
    elsewhere = create_dataset(
        "image_folder", root=tmp_path, train_dir=str(root / "train"), test_dir="imgs/holdout"
    )
    assert elsewhere.train_x.shape == (3, 3, 64, 64)


def test_image_folder_missing_and_unknown_class(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="<class>/<image>") as info:
        create_dataset("image_folder", root=tmp_path)
    assert "\n" not in str(info.value)
    root = _write_folder(tmp_path / "imgs")
    _png(root / "val" / "bird" / "b.png", _solid(GREEN))
    with pytest.raises(DataFormatError, match="bird"):
        create_dataset("image_folder", root=root, image_size=4)


def test_image_folder_trains_through_the_cli(tmp_path: Path, fast_run, one_thread) -> None:
    root = _write_folder(tmp_path / "imgs")
    sets = [s for s in fast_run if not s.startswith("data.")]
    sets += [
        "data.name=image_folder",
        f"data.root={root}",
        "data.options.image_size=8",
        "data.val_size=0",
        "train.epochs=1",
        "eval.final=false",
    ]
    args = ["train", "--out", str(tmp_path / "run"), "--store", str(tmp_path / "s.db"), "--quiet"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"test_rob_acc"' in lines[0]


# ---------------------------------------------------------------- random resized crop


def test_resized_crop_is_interpolate_of_each_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 10, 14), dtype=torch.uint8, generator=generator)
    boxes = random_resized_crop_boxes(32, 10, 14, generator, x.device)
    flip = torch.rand(32, generator=generator) < 0.5
    out = resized_crop(x, boxes, flip)
    for b in range(32):
        top, left, h, w = boxes[b].tolist()
        crop = x[b : b + 1, :, top : top + h, left : left + w].float()
        want = F.interpolate(crop, size=(10, 14), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out[b], want.flip(2) if flip[b] else want, atol=1e-3, rtol=0)


def _torchvision_get_params(height: int, width: int, rng: random.Random) -> tuple[int, ...]:
    """torchvision's ``RandomResizedCrop.get_params`` (defaults), one sample at a time."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width  # square images: the fallback is the whole image


def test_random_resized_crop_boxes_follow_torchvisions_distribution() -> None:
    generator = torch.Generator().manual_seed(1)
    boxes = random_resized_crop_boxes(20000, 32, 32, generator, torch.device("cpu"))
    top, left, h, w = boxes.T.double()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    rng = random.Random(0)
    reference = torch.tensor([_torchvision_get_params(32, 32, rng) for _ in range(20000)])
    ref_top, ref_left, ref_h, ref_w = reference.T.double()
    # the same distribution: means and spreads of area, aspect ratio and offsets agree to within
    # sampling error (20,000 draws each)
    for ours, theirs in [
        (h * w / 1024, ref_h * ref_w / 1024),
        (w / h, ref_w / ref_h),
        (top, ref_top),
        (left, ref_left),
    ]:
        assert ours.mean().item() == pytest.approx(theirs.mean().item(), rel=0.03)
        assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.05)
    assert (h * w).min() >= (ref_h * ref_w).min() - 4


def test_random_resized_crop_falls_back_to_torchvisions_central_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    # 1 x 40 images: no crop of area >= 0.9 x 40 with ratio <= 4/3 fits one row, so the central
    # crop: the whole height, width round(1 x 4/3) = 1, centred at (40 - 1) // 2.
    boxes = random_resized_crop_boxes(5, 1, 40, generator, torch.device("cpu"), scale=(0.9, 1.0))
    assert boxes.tolist() == [[0, 19, 1, 1]] * 5


def test_random_resized_crop_is_registered_reproducible_and_uint8() -> None:
    augment = AUGMENTATIONS.get("random_resized_crop")
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    one = augment(x, torch.Generator().manual_seed(5))
    two = augment(x, torch.Generator().manual_seed(5))
    assert one.dtype == torch.uint8 and one.shape == x.shape
    assert torch.equal(one, two) and not torch.equal(one, x)
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)  # a flat image stays flat
    assert torch.equal(augment(flat, torch.Generator().manual_seed(0)), flat)
