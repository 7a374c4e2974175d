"""``data.train_size`` (a class-stratified subset of the training split) and ``eval.select``
(the per-epoch metric that picks the best checkpoint), Xing, Song & Cheng 2022 Table 3 and
section 5.1."""

from __future__ import annotations

import pytest
import torch

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.data import create_dataset
from robustlab.errors import ConfigError
from robustlab.rundir import RunDirectory
from robustlab.training.checkpoint import load_checkpoint
from robustlab.training.runner import SELECTION_RULES, fit, improves, load_data, prepare


@pytest.mark.parametrize("size", [100, 0.3, 737, 1])
def test_train_size_keeps_class_proportions_within_one_point(size: int | float) -> None:
    data = create_dataset("digits").split_validation(0.1, seed=0)
    n = len(data.train_y)
    counts = torch.bincount(data.train_y, minlength=10).double()
    subset = data.subsample_train(size, seed=3)
    count = round(size * n) if isinstance(size, float) else size
    assert len(subset.train_y) == count == len(subset.train_x)
    kept = torch.bincount(subset.train_y, minlength=10).double()
    assert torch.all((kept - count * counts / n).abs() < 1)
    # a subset of the training points, each image with its own label
    pairs = {
        (bytes(x.flatten().tolist()), int(y))
        for x, y in zip(data.train_x, data.train_y, strict=True)
    }
    assert all(
        (bytes(x.flatten().tolist()), int(y)) in pairs
        for x, y in zip(subset.train_x, subset.train_y, strict=True)
    )


def test_train_size_is_seeded_and_leaves_the_validation_split_alone(tmp_path) -> None:
    base = ["data.name=digits", "data.val_size=100", "device=cpu"]
    cpu = torch.device("cpu")
    full = load_data(build_config(None, base), cpu)
    a = load_data(build_config(None, [*base, "data.train_size=200"]), cpu)
    b = load_data(build_config(None, [*base, "data.train_size=200"]), cpu)
    c = load_data(build_config(None, [*base, "data.train_size=200", "seed=1"]), cpu)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_y, c.train_y[:200])
    assert torch.equal(a.val_x, full.val_x) and len(a.train_y) == 200


@pytest.mark.parametrize(
    "value,where",
    [("0", "config"), ("-5", "config"), ("1.5", "config"), ("100000", "data")],
)
def test_bad_train_size_is_refused_before_anything_is_written(
    tmp_path, capsys, value: str, where: str
) -> None:
    if where == "config":
        with pytest.raises(ConfigError, match="data.train_size"):
            build_config(None, [f"data.train_size={value}"])
    out = tmp_path / "run"
    code = main(["train", "--set", f"data.train_size={value}", "--out", str(out), "--store",
                 str(tmp_path / "db.sqlite"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"robustlab train: error: data.train_size={value}")
    assert not out.exists() and not (tmp_path / "db.sqlite").exists()


def test_improves_follows_each_metrics_direction() -> None:
    assert SELECTION_RULES["val_rob_acc"] and not SELECTION_RULES["test_rob_loss"]
    assert improves("val_rob_acc", 0.5, {"val_rob_acc": 0.4})
    assert not improves("val_rob_acc", 0.4, {"val_rob_acc": 0.4})  # the earliest tie is kept
    assert improves("test_rob_loss", 0.3, {"test_rob_loss": 0.4})
    assert not improves("test_rob_loss", 0.5, {"test_rob_loss": 0.4})
    assert not improves("test_rob_loss", None, None)
    assert improves("val_rob_loss", 1.0, None)


@pytest.mark.parametrize(
    "select", ["val_rob_acc", "val_rob_loss", "test_nat_loss", "test_rob_loss"]
)
def test_eval_select_picks_the_best_checkpoint(tmp_path, fast_run, one_thread, select) -> None:
    config = build_config(
        None, [*fast_run, "train.epochs=4", "eval.final=false", f"eval.select={select}"]
    )
    run = RunDirectory.create(tmp_path / "run", config, "r1")
    result = fit(prepare(config), run, "r1", show_progress=False)
    values = [m[select] for m in result.history]
    pick = max if SELECTION_RULES[select] else min
    assert result.best["epoch"] == values.index(pick(values)) + 1
    best = load_checkpoint(run.best_checkpoint)
    assert best["epoch"] == result.best["epoch"]


def test_unknown_select_is_refused() -> None:
    with pytest.raises(ConfigError, match="eval.select"):
        build_config(None, ["eval.select=val_acc"])
