"""A run's results do not depend on the working directory (issue 8, point 12).

A run records the absolute paths of its store and data root; ``eval RUN`` and
``train --resume RUN`` started from another directory use them (``--store``/``--data-root``
override), and nothing appears under the other directory.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import sets
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.store import ResultsStore

# MNIST-format files (the smallest dataset read from files under data.root): a relative
# data.root is what a cwd-dependent run gets wrong.
_IDX = {
    "train-images-idx3-ubyte": (0x803, (96, 28, 28)),
    "train-labels-idx1-ubyte": (0x801, (96,)),
    "t10k-images-idx3-ubyte": (0x803, (16, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x801, (16,)),
}


def _write_mnist(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for stem, (magic, shape) in _IDX.items():
        high = 256 if len(shape) > 1 else 10
        array = rng.integers(0, high, size=shape, dtype=np.uint8)
        header = struct.pack(">I", magic) + struct.pack(f">{len(shape)}i", *shape)
        (folder / stem).write_bytes(header + array.tobytes())


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_run: list[str], one_thread):
    """``(A, B, run_dir)``: a one-epoch MNIST run trained in A with the defaults ``--out``,
    ``--store`` and ``data.root = "data"`` (all relative to A), and an empty directory B that
    is the working directory afterwards."""
    a, b = tmp_path / "A", tmp_path / "B"
    b.mkdir()
    _write_mnist(a / "data")
    overrides = [o for o in fast_run if not o.startswith("data.")]
    overrides += ["data.name=mnist", "data.val_size=16", "train.epochs=1", "eval.n_train=0"]
    monkeypatch.chdir(a)
    assert main(["train", *sets(overrides), "--quiet"]) == 0
    (run_dir,) = [p for p in (a / "runs").iterdir() if p.is_dir()]
    monkeypatch.chdir(b)
    return a, b, run_dir


def _evaluations(store: Path) -> list[dict]:
    return ResultsStore(store, create=False).evaluations()


def test_a_run_records_absolute_paths(dirs) -> None:
    a, _, run_dir = dirs
    info = json.loads((run_dir / "run.json").read_text())
    assert info["store"] == str((a / "runs" / "robustlab.db").resolve())
    assert info["data_root"] == str((a / "data").resolve())
    assert info["run_dir"] == str(run_dir.resolve())
    config = build_config(run_dir / "config.toml")
    assert config.data.root == str((a / "data").resolve())


def test_eval_from_another_directory_uses_the_runs_store_and_data(dirs, capsys) -> None:
    a, b, run_dir = dirs
    before = len(_evaluations(a / "runs" / "robustlab.db"))
    assert main(["eval", str(run_dir), "--n", "8", "--steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 8
    assert list(b.iterdir()) == []  # no ./runs/robustlab.db, nothing at all
    rows = _evaluations(a / "runs" / "robustlab.db")
    assert len(rows) == before + 1


def test_train_resume_from_another_directory_uses_the_runs_store(dirs) -> None:
    a, b, run_dir = dirs
    store = ResultsStore(a / "runs" / "robustlab.db", create=False)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert list(b.iterdir()) == []
    assert store.has_run(run_id) and len(store.epochs(run_id)) == 1


def test_store_and_data_root_can_be_overridden(dirs, capsys) -> None:
    a, b, run_dir = dirs
    moved = b.parent / "C" / "data"
    shutil.move(a / "data", moved)
    # The data moved: the recorded (absolute) root is named, not a cwd-relative "data".
    assert main(["eval", str(run_dir), "--n", "4", "--steps", "1", "--json"]) == 2
    assert str((a / "data").resolve()) in capsys.readouterr().err
    other = b.parent / "other.db"
    argv = ["eval", str(run_dir), "--n", "4", "--steps", "1", "--json"]
    assert main([*argv, "--data-root", str(moved), "--store", str(other)]) == 0
    assert len(_evaluations(other)) == 1
    # train --resume --data-root records where the data is now.
    assert main(["train", "--resume", str(run_dir), "--data-root", str(moved), "--quiet"]) == 0
    assert build_config(run_dir / "config.toml").data.root == str(moved.resolve())
    assert json.loads((run_dir / "run.json").read_text())["data_root"] == str(moved.resolve())
    assert main(argv) == 0  # from the updated record
    assert sorted(p.name for p in b.iterdir()) == []
