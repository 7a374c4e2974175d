"""The embedded datasets, the validation split, the on-device loader and batched augmentation."""

from __future__ import annotations

import pytest
import torch

from robustlab.data import (
    DeviceLoader,
    channel_stats,
    create_dataset,
    list_datasets,
    random_crop,
    random_flip,
)
from robustlab.errors import ConfigError, UnknownNameError


def test_registry_lists_every_dataset() -> None:
    assert {"digits", "synthetic", "cifar10", "cifar100", "svhn", "mnist", "tiny_imagenet"} <= set(
        list_datasets()
    )
    with pytest.raises(UnknownNameError, match="valid: .*digits"):
        create_dataset("digitz")


def test_digits_is_the_sklearn_dataset_with_a_fixed_split() -> None:
    first, second = create_dataset("digits"), create_dataset("digits")
    assert first.train_x.shape == (1438, 1, 8, 8) and first.test_x.shape == (359, 1, 8, 8)
    assert first.train_x.dtype == torch.uint8 and int(first.train_x.max()) == 255
    assert first.num_classes == 10 and first.augment == "none"
    assert torch.equal(first.test_x, second.test_x) and torch.equal(first.test_y, second.test_y)
    # Stratified: every class is in the test split in proportion.
    counts = torch.bincount(first.test_y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


def test_digits_holds_exactly_the_sklearn_images() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = create_dataset("digits")
    ours = torch.cat([data.train_x, data.test_x]).flatten(1).double() * 16 / 255
    labels = torch.cat([data.train_y, data.test_y])
    expected = torch.from_numpy(bunch.data)
    rows = lambda x, y: sorted(zip(map(tuple, x.round().tolist()), y.tolist(), strict=True))  # noqa: E731
    assert rows(ours, labels) == rows(expected, torch.from_numpy(bunch.target))


def test_synthetic_is_seeded_and_options_are_checked() -> None:
    a = create_dataset("synthetic", n_train=64, n_test=32, image_size=12, channels=1, seed=3)
    b = create_dataset("synthetic", n_train=64, n_test=32, image_size=12, channels=1, seed=3)
    c = create_dataset("synthetic", n_train=64, n_test=32, image_size=12, channels=1, seed=4)
    assert a.train_x.shape == (64, 1, 12, 12) and a.image_size == 12 and a.in_channels == 1
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    with pytest.raises(ConfigError, match="data.options.n_train"):
        create_dataset("synthetic", n_train=0)
    with pytest.raises(ConfigError, match="data.options.n_train='abc': expected an integer"):
        create_dataset("synthetic", n_train="abc")
    with pytest.raises(ConfigError, match="data.options.noise=True: expected a number"):
        create_dataset("synthetic", noise=True)
    with pytest.raises(ConfigError, match="data.options.imagesize.*did you mean .image_size"):
        create_dataset("synthetic", imagesize=5)


def test_channel_stats_match_a_float_computation() -> None:
    images = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=8)
    x = images.double() / 255
    assert torch.allclose(
        torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)), atol=1e-12
    )
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3)), atol=1e-9)


def test_validation_split_is_disjoint_seeded_and_sized() -> None:
    data = create_dataset("digits")
    split = data.split_validation(0.1, seed=0)
    assert len(split.val_y) == round(0.1 * 1438) and len(split.train_y) + len(split.val_y) == 1438
    again = data.split_validation(0.1, seed=0)
    other = data.split_validation(0.1, seed=1)
    assert torch.equal(split.val_x, again.val_x) and not torch.equal(split.val_x, other.val_x)
    # Disjoint: every training image row is used exactly once across the two parts.
    merged = torch.cat([split.train_x, split.val_x]).flatten(1)
    original = data.train_x.flatten(1)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(merged) == key(original)
    assert data.split_validation(100, seed=0).val_y.shape == (100,)
    assert data.split_validation(0, seed=0).val_y is None
    with pytest.raises(ConfigError, match="data.val_size"):
        data.split_validation(1438, seed=0)


def test_loader_covers_every_point_once_per_epoch_and_reshuffles() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous()
    labels = torch.arange(50)
    loader = DeviceLoader(images, labels, batch_size=16, shuffle=True, seed=7)
    assert len(loader) == 4
    epoch0 = [y for _, y in loader.epoch(0)]
    assert [len(y) for y in epoch0] == [16, 16, 16, 2]
    assert sorted(torch.cat(epoch0).tolist()) == list(range(50))
    order0, order1 = torch.cat(epoch0), torch.cat([y for _, y in loader.epoch(1)])
    assert not torch.equal(order0, order1)
    assert torch.equal(
        order0, torch.cat([y for _, y in loader.epoch(0)])
    )  # reproducible from (seed, epoch)
    for x, y in loader.epoch(2):  # images travel with their labels, mapped to [0, 1]
        assert x.dtype == torch.float32
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_loader_without_shuffle_keeps_order() -> None:
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4)
    assert torch.equal(torch.cat([y for _, y in loader]), labels)
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(images.float(), labels, batch_size=4)


def _reference_crop(image: torch.Tensor, top: int, left: int, padding: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    return padded[:, top : top + image.shape[1], left : left + image.shape[2]]


def test_random_crop_equals_the_per_sample_definition() -> None:
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 6, 7), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(5)
    out = random_crop(x, 4, generator)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # Replay the offsets the batched op drew and crop each sample the slow, obvious way.
    offsets = torch.randint(0, 9, (2, 64), generator=torch.Generator().manual_seed(5))
    for i in range(64):
        expected = _reference_crop(x[i], int(offsets[0, i]), int(offsets[1, i]), 4)
        assert torch.equal(out[i], expected)
    assert len({tuple(o) for o in offsets.T.tolist()}) > 20  # offsets really vary per sample


def test_random_flip_flips_about_half_and_only_horizontally() -> None:
    x = torch.randint(0, 256, (400, 1, 3, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = torch.tensor(
        [
            torch.equal(o, xi.flip(2)) and not torch.equal(o, xi)
            for o, xi in zip(out, x, strict=True)
        ]
    )
    unchanged = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped | unchanged).all())
    assert 150 < int(flipped.sum()) < 250


def test_crop_flip_augmentation_is_applied_by_the_loader() -> None:
    data = create_dataset("synthetic", n_train=32, n_test=8, augment=True)
    assert data.augment == "crop_flip"
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=32, augment=data.augment, seed=0)
    ((x, _),) = list(loader.epoch(0))
    assert x.shape == (32, 3, 8, 8)
    assert not torch.equal((x * 255).round().to(torch.uint8), data.train_x)
    # Zero padding shows up as black borders on some images.
    assert bool((x == 0).flatten(1).any(1).any())


def test_fused_crop_flip_equals_crop_then_flip() -> None:
    from robustlab.data.augment import crop_flip

    x = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    fused = crop_flip(x, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    composed = random_flip(random_crop(x, 4, generator), generator)
    assert torch.equal(fused, composed)


def test_epoch_batches_gives_subclasses_length_seeding_and_finishing():
    """The part the device loaders share (:class:`~robustlab.data.loader.EpochBatches`): a
    subclass writes only ``epoch`` and gets ``len()``, ``iter()`` (epoch 0), an epoch generator
    reproducible from ``(seed, epoch)`` and batches finished as float32 in [0, 1]."""
    from robustlab.data.loader import EpochBatches

    class Halves(EpochBatches):
        def epoch(self, epoch=0):
            generator = self.generator(epoch)
            order = torch.randperm(len(self.labels), generator=generator)
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                yield self.finish(self.images[index], self.labels[index], generator)

    images = torch.arange(10 * 4, dtype=torch.uint8).view(10, 1, 2, 2) * 6
    loader = Halves(images, torch.arange(10), 4, "none", seed=7)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and torch.equal(x, images[y].float() / 255)
    again = [y for _, y in loader.epoch(0)]
    assert all(torch.equal(a, b) for a, (_, b) in zip(again, batches, strict=True))
    assert not all(
        torch.equal(a, b) for (_, a), (_, b) in zip(loader.epoch(1), batches, strict=True)
    )
