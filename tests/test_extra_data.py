"""Extra pseudo-labelled data (RST, Carmon et al. 2019; Wu et al.'s WAR†): the pickle format of
yaircarmon/semisup-adv and its per-batch mixing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.data import MixedLoader, load_extra
from robustlab.errors import ConfigError, DataFormatError, DataNotFoundError
from robustlab.training.runner import prepare


def _write_rst_pickle(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The file generate_pseudolabels.py + tinyimages_prediction.py produce: a pickled dict
    with 'data' (N x H x W x C uint8, as CIFAR10.data) and 'extrapolated_targets'."""
    content = {
        "data": images,
        "extrapolated_targets": labels,
        "prediction_model": "vanilla",
        "prediction_model_epoch": 200,
    }
    with path.open("wb") as handle:
        pickle.dump(content, handle)
    return path


def test_load_extra_reads_the_rst_pickle_as_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 3, 9, 1, 2])
    path = _write_rst_pickle(tmp_path / "extra.pickle", images, labels)
    x, y = load_extra(path, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), num_classes=10)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(x[2, 1], torch.from_numpy(images[2, :, :, 1]))  # channel 1 of image 2
    assert y.tolist() == labels.tolist() and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ({"data": np.zeros((2, 8, 8, 3), np.uint8)}, DataFormatError, "extrapolated_targets"),
        (
            {"data": np.zeros((2, 4, 4, 3), np.uint8), "extrapolated_targets": np.zeros(2, int)},
            DataFormatError,
            "uint8 N x 8 x 8 x 3",
        ),
        (
            {"data": np.zeros((2, 8, 8, 3), np.uint8), "extrapolated_targets": np.array([0, 10])},
            DataFormatError,
            "10 classes",
        ),
        (
            {"data": np.zeros((2, 8, 8, 3), np.uint8), "extrapolated_targets": np.zeros(3, int)},
            DataFormatError,
            "one label per image",
        ),
    ],
)
def test_load_extra_refuses_other_formats(
    tmp_path: Path, content: dict, error: type, match: str
) -> None:
    path = tmp_path / "bad.pickle"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(error, match=match) as info:
        load_extra(path, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), num_classes=10)
    assert "\n" not in str(info.value)


def test_load_extra_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="no such file"):
        load_extra(tmp_path / "none.pickle", torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 10)


def _marked_sets(n: int = 100, n_extra: int = 40) -> tuple[torch.Tensor, ...]:
    """Labelled image i is filled with the value i (< 200); extra images with 255, label 9."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    labels = torch.arange(n) % 5
    extra = torch.full((n_extra, 1, 2, 2), 255, dtype=torch.uint8)
    return images, labels, extra, torch.full((n_extra,), 9)


def test_mixed_batches_hold_the_fraction_of_extra_images() -> None:
    images, labels, extra, extra_labels = _marked_sets()
    loader = MixedLoader(images, labels, extra, extra_labels, 16, fraction=0.5, seed=3)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 7  # ceil(100 / 16): RST's epoch of labelled size
    labelled_seen = []
    for x, y in batches:
        assert x.shape == (16, 1, 2, 2) and x.dtype == torch.float32
        from_extra = x[:, 0, 0, 0] == 1.0
        assert int(from_extra.sum()) == 8  # int(16 * 0.5)
        assert (y[from_extra] == 9).all() and (y[~from_extra] < 5).all()
        index = (x[~from_extra, 0, 0, 0] * 255).round().long()
        assert torch.equal(y[~from_extra], labels[index])  # labels travel with their images
        labelled_seen += index.tolist()
        assert from_extra.float().std() > 0  # shuffled within the batch, not [labelled, extra]
    assert len(labelled_seen) == 56 == len(set(labelled_seen))  # a permutation, no repeats


def test_mixed_epochs_are_reproducible_and_differ() -> None:
    sets = _marked_sets()
    one = MixedLoader(*sets, 16, fraction=0.25, seed=1)
    two = MixedLoader(*sets, 16, fraction=0.25, seed=1)
    first = [x for x, _ in one.epoch(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in two.epoch(2)], strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(first, [x for x, _ in one.epoch(3)], strict=True)
    )


def test_the_last_short_chunk_is_filled_with_extra_images() -> None:
    images, labels, extra, extra_labels = _marked_sets(n=9, n_extra=3)
    # batch 8, fraction 1/8: 7 labelled + 1 extra, then the 2 labelled left + 6 extra
    loader = MixedLoader(images, labels, extra, extra_labels, 8, fraction=0.125)
    batches = [x[:, 0, 0, 0] for x, _ in loader.epoch(0)]
    assert [int((b == 1.0).sum()) for b in batches] == [1, 6]
    assert all(len(b) == 8 for b in batches)
    # fraction 0: no extra image at all, the last batch short, as RST's sampler
    plain = MixedLoader(images, labels, extra, extra_labels, 4, fraction=0.0)
    assert [len(x) for x, _ in plain.epoch(0)] == [4, 4, 1]
    assert all((x < 1.0).all() for x, _ in plain.epoch(0))


def test_fraction_one_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(overrides=["data.extra_fraction=1"])
    assert info.value.key == "data.extra_fraction"


def _extra_for_fast_run(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    return _write_rst_pickle(tmp_path / "pseudo.pickle", images, rng.integers(0, 10, size=50))


def test_prepare_mixes_the_extra_set(tmp_path: Path, fast_run, one_thread) -> None:
    path = _extra_for_fast_run(tmp_path)
    config = build_config(overrides=[*fast_run, f"data.extra={path}", "data.extra_fraction=0.25"])
    exp = prepare(config)
    assert isinstance(exp.loader, MixedLoader)
    assert exp.loader.n_extra == 16 and exp.data.extra_x.shape == (50, 3, 8, 8)
    plain = prepare(build_config(overrides=fast_run))
    assert not isinstance(plain.loader, MixedLoader)
    assert len(exp.loader) == len(plain.loader)  # the same batches per epoch


def test_train_with_extra_data_records_the_path_absolute(
    tmp_path: Path, fast_run, one_thread, monkeypatch, capsys
) -> None:
    _extra_for_fast_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    sets = [*fast_run, "data.extra=pseudo.pickle", "train.epochs=1", "eval.final=false"]
    args = ["train", "--out", str(out), "--store", str(tmp_path / "s.db"), "--quiet"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    saved = (out / "config.toml").read_text()
    assert f'extra = "{tmp_path / "pseudo.pickle"}"' in saved
    assert "extra_fraction = 0.5" in saved
