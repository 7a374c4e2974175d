"""Bad input, as a matrix: every kind of mistake a user can make, over the CLI and the library.

Each CLI case must end with exactly one line on stderr that names what is wrong and what is
allowed, exit code 2, nothing on stdout, no traceback, and nothing written (the working
directory, the trained run and the store are snapshotted before and after). Each library case
must raise a specific :class:`~robustlab.errors.RobustlabError` subclass whose message is one
line naming the same, and write nothing.

Covers issue 14 point 6 and the bad-input cases of the review (issue 8): #4 evaluation state of
another model, #10 an external model that does not fit the data, #11 stores that are not SQLite,
unknown devices, ``--out`` a file or uncreatable, #15 ``config`` validating as ``train`` (model
families' depths and options, method options, a validation split larger than the training set,
malformed lists, unknown tables, L2 budgets beyond the input space), #20 old option names. The
closed-pipe case of #11 exits 0 quietly and is :func:`test_a_closed_pipe_exits_quietly`.

The cases that failed before issue 14 (a traceback, exit 1, two lines, work done or files
written before the refusal, a misleading message) are listed in :data:`FIXED`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_RUN, sets
from robustlab.cli.main import main
from robustlab.errors import (
    AttackInputError,
    CheckpointError,
    ConfigError,
    DataFormatError,
    DataNotFoundError,
    RobustlabError,
    RunError,
    UnknownNameError,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` with (size, mtime) for files: any write changes it.

    SQLite's ``-wal``/``-shm`` sidecars are left out: reading a WAL-mode store read-only (the
    check that it is a results store) makes them, and they hold no data of the store.
    """
    out: dict[str, tuple[int, int] | None] = {}
    if not root.exists():
        return out
    for path in root.rglob("*"):
        if path.name.endswith(("-wal", "-shm")):
            continue
        stat = path.stat()
        out[str(path.relative_to(root))] = (
            (stat.st_size, stat.st_mtime_ns) if path.is_file() else None
        )
    return out


# ---------------------------------------------------------------------------------------------
# Files the cases write, in the official formats


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


MNIST_MAGIC = {
    "train-images-idx3-ubyte": 0x803,
    "train-labels-idx1-ubyte": 0x801,
    "t10k-images-idx3-ubyte": 0x803,
    "t10k-labels-idx1-ubyte": 0x801,
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """LeCun's idx format: a big-endian magic, the dimensions, then the uint8 values."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 5, n_test: int = 2, **edit: Any) -> None:
    """Gzipped idx files under ``root``; ``edit`` maps a stem to ``"truncate"``, ``"magic"``,
    ``"not-gzip"``, or an array of labels to write instead."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for stem, magic in MNIST_MAGIC.items():
        change = edit.get(stem.replace("-", "_"))
        array = change if isinstance(change, np.ndarray) else arrays[stem]
        change = change if isinstance(change, str) else None
        raw = idx_bytes(array, 0x801 if change == "magic" and magic == 0x803 else magic)
        if change == "truncate":
            raw = raw[: len(raw) // 2]
        body = raw if change == "not-gzip" else gzip.compress(raw)
        write(root / f"{stem}.gz", body)


def write_cifar10(root: Path, n: int = 2, **edit: bytes) -> None:
    """The five training batches and the test batch as pickled dicts (Python 3 pickles load
    the same way as the official Python 2 ones: see tests/test_data_formats.py)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        write(folder / name, edit.get(name, pickle.dumps(batch, protocol=2)))


def truncated_pickle() -> bytes:
    batch = {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8)}
    raw = pickle.dumps(batch, protocol=2)
    return raw[: len(raw) // 2]


MISFITS = """
from torch import nn


def cifar_sized():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


def small(width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, width), nn.ReLU(), nn.Linear(width, 10)).eval()
"""


def not_sqlite(tmp: Path) -> None:
    write(tmp / "notes.db", "these are notes, not a database\n")


def other_program_db(tmp: Path) -> None:
    with sqlite3.connect(tmp / "other.db") as db:
        db.execute("CREATE TABLE contacts (name TEXT)")


def spec(body: str) -> Callable[[Path], None]:
    base = "[base]\n" + "\n".join(f'"{k}" = {v!r}' for k, v in _tiny_tree().items()) + "\n"
    return lambda tmp: write(tmp / "sweep.toml", 'name = "s"\n' + base + body)


def _tiny_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in TINY_RUN:
        key, value = item.split("=", 1)
        tree[key] = int(value) if value.isdigit() else value
    return tree


# An evaluation that saves its cascade state: run once to write the state, then again against
# a model that changed since.
EVAL_WITH_STATE = ["eval", "misfits:small", "--data", "synthetic", "--eps", "0.1", "--n", "16"]
EVAL_WITH_STATE += ["--attack", "fgsm", "--state", "state.pt", "--store", "evals.db"]


def state_of_another_model(tmp: Path) -> None:
    """An evaluation state saved for ``misfits:small`` (width 8), then the source changed so
    the same reference builds width 16 (issue 8 #4: resumed silently before)."""
    write(tmp / "misfits.py", MISFITS)
    code = main([*EVAL_WITH_STATE, "--quiet"])
    assert code == 0
    sys.modules.pop("misfits", None)
    write(tmp / "misfits.py", MISFITS.replace("width=8", "width=16"))


def read_only(monkeypatch: pytest.MonkeyPatch, tmp: Path, name: str) -> None:
    """Tests run as root, for whom a read-only directory is no obstacle: make ``os.access``
    report ``tmp/name`` as not writable, as it is for every other user."""
    import robustlab.rundir

    (tmp / name).mkdir()
    locked, real = str(tmp / name), os.access
    monkeypatch.setattr(
        robustlab.rundir.os, "access", lambda path, mode: str(path) != locked and real(path, mode)
    )


# ---------------------------------------------------------------------------------------------
# The CLI matrix


@dataclass(frozen=True)
class CliCase:
    """``argv`` ("RUN" is a finished run directory) must be refused with one line containing
    every fragment. ``setup(tmp)`` writes the files the case needs before the snapshot."""

    id: str
    argv: list[str]
    fragments: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    monkeypatched: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    modules: tuple[str, ...] = field(default=())


CLI_CASES = [
    # --- malformed TOML
    CliCase(
        "toml-malformed",
        ["train", "bad.toml"],
        ("config", "bad.toml", "not valid TOML"),
        lambda t: write(t / "bad.toml", "[attack]\neps = 8/255\n"),
    ),
    CliCase(
        "toml-unclosed-table",
        ["config", "bad.toml"],
        ("bad.toml", "not valid TOML"),
        lambda t: write(t / "bad.toml", "[train\nepochs = 3\n"),
    ),
    CliCase(
        "sweep-spec-malformed",
        ["sweep", "sweep.toml", "--out", "sweeps"],
        ("sweep.toml", "TOML"),
        lambda t: write(t / "sweep.toml", 'name = "s"\n[axes\n'),
    ),
    CliCase(  # issue 8 #15
        "set-malformed-list",
        ["config", *sets(["train.milestones=[10,"])],
        ("train.milestones", "[10,", "malformed list"),
    ),
    CliCase("set-without-equals", ["train", *sets(["noequals"])], ("--set", "KEY=VALUE")),
    # --- unknown keys, with suggestions
    CliCase("unknown-key", ["train", *sets(["attack.epss=0.1"])], ("attack.epss", "'attack.eps'")),
    CliCase(  # issue 8 #15: named the key, not a Python dict
        "unknown-table", ["config", *sets(["atack.eps=0.1"])], ("atack.eps", "'attack.eps'")
    ),
    CliCase(
        "unknown-table-in-file",
        ["train", "run.toml"],
        ("trian.epochs", "did you mean 'train.epochs'"),
        lambda t: write(t / "run.toml", "[trian]\nepochs = 3\n"),
    ),
    CliCase(
        "unknown-leaf-elsewhere",
        ["train", *sets(["eps=0.1"])],
        ("eps", "'attack.eps' or 'eval.eps'"),
    ),
    CliCase(  # issue 8 #15
        "unknown-model-option",
        ["config", *sets(["model.options.nosuch=1"])],
        ("model.options.nosuch", "mlp takes options"),
    ),
    CliCase(  # issue 8 #15
        "unknown-method-option",
        ["config", *sets(["method.name=trades", "method.options.detach_clen=true"])],
        ("method.options.detach_clen", "detach_clean"),
    ),
    CliCase(
        "unknown-data-option",
        ["train", *sets(["data.name=synthetic", "data.options.n_trian=9"])],
        ("data.options.n_trian", "did you mean 'n_train'"),
    ),
    CliCase(
        "unknown-sweep-key",
        ["sweep", "sweep.toml", "--out", "sweeps"],
        ("axis", "did you mean 'axes'"),
        spec('[axis]\n"method.lam" = [1, 2]\n'),
    ),
    CliCase(
        "unknown-model-name", ["train", *sets(["model.name=resnet9000"])], ("resnet9000", "mlp")
    ),
    CliCase("unknown-attack-name", ["eval", "RUN", "--attack", "pgdd"], ("pgdd", "'pgd'")),
    # --- wrong types
    CliCase("type-int", ["train", *sets(["train.epochs=ten"])], ("train.epochs", "ten", "integer")),
    CliCase(
        "type-int-in-file",
        ["train", "run.toml"],
        ("train.epochs", "2.5", "integer"),
        lambda t: write(t / "run.toml", "[train]\nepochs = 2.5\n"),
    ),
    CliCase(
        "type-bool",
        ["train", *sets(["attack.random_start=maybe"])],
        ("attack.random_start", "maybe", "true or false"),
    ),
    CliCase("type-number", ["train", *sets(["attack.eps=abc"])], ("attack.eps", "abc", "number")),
    CliCase("type-table", ["train", *sets(["model=3"])], ("model", "table of keys")),
    # --- out of range
    CliCase("range-negative-eps", ["train", *sets(["attack.eps=-0.1"])], ("attack.eps", ">= 0")),
    CliCase("range-linf-eps", ["train", *sets(["attack.eps=1.5"])], ("attack.eps", "Linf")),
    CliCase(  # found by the config round-trip property: its step underflowed to 0
        "range-subnormal-eps",
        ["train", *sets(["attack.eps=1e-40"])],
        ("attack.eps", ">= 1.175e-38"),
    ),
    CliCase(  # found by the config round-trip property: refused only once saved and re-read
        "contra-eval-norm-inherits-l2-budget",
        ["train", *sets(["attack.norm=L2", "attack.eps=2", "eval.norm=Linf"])],
        ("eval.eps", "2.0", "Linf", "set eval.eps"),
    ),
    CliCase("range-width", ["train", *sets(["model.width=0"])], ("model.width", "> 0")),
    CliCase("range-momentum", ["train", *sets(["train.momentum=1"])], ("train.momentum", "[0, 1)")),
    CliCase(
        "range-val-fraction", ["train", *sets(["data.val_size=1.0"])], ("data.val_size", "[0, 1)")
    ),
    CliCase("range-eval-eps", ["eval", "RUN", "--eps", "2"], ("--eps", "2", "Linf")),
    CliCase("range-eval-steps", ["eval", "RUN", "--steps", "0"], ("--steps", "0", "> 0")),
    # --- contradictory settings
    CliCase(  # issue 8 #15
        "contra-lenet-depth",
        ["config", *sets(["model.name=lenet", "model.depth=3"])],
        ("model.depth", "3"),
    ),
    CliCase(  # issue 8 #15
        "contra-wrn-depth", ["config", *sets(["model.name=wrn", "model.depth=30"])], ("depth", "30")
    ),
    CliCase(  # issue 8 #15
        "contra-val-larger-than-train",
        ["config", *sets(["data.name=synthetic", "data.val_size=100000"])],
        ("data.val_size", "100000"),
    ),
    CliCase(  # issue 8 #15
        "contra-l2-beyond-diameter",
        ["config", *sets(["data.name=synthetic", "attack.norm=L2", "attack.eps=20"])],
        ("attack.eps", "20", "L2 budget must be <= 13.86"),
    ),
    CliCase(
        "contra-milestones",
        ["train", *sets(["train.epochs=10", "train.milestones=[5,40]"])],
        ("train.milestones", "train.epochs=10"),
    ),
    CliCase(
        "contra-war-method",
        ["train", *sets(["method.name=clean", "method.lam_schedule=war", "method.zeta=3"])],
        ("method.lam_schedule", "WAR adapts"),
    ),
    CliCase(
        "contra-awp-key",
        ["train", *sets(["method.name=pgd_at", "method.awp_gamma=0.01"])],
        ("method.awp_gamma", "awp"),
    ),
    CliCase(
        "contra-resume-and-set",
        ["train", "--resume", "RUN", *sets(["train.epochs=2"])],
        ("--resume",),
    ),
    # --- dataset files: missing, truncated, wrong format, empty
    CliCase(
        "mnist-missing",
        ["train", *sets(["data.name=mnist", "data.root=nodata"])],
        ("train-images-idx3-ubyte", "data.root"),
    ),
    CliCase(
        "mnist-truncated",
        ["train", *sets(["data.name=mnist", "data.root=mnist"])],
        ("t10k-images-idx3-ubyte",),
        lambda t: write_mnist(t / "mnist", t10k_images_idx3_ubyte="truncate"),
    ),
    CliCase(
        "mnist-wrong-magic",
        ["train", *sets(["data.name=mnist", "data.root=mnist"])],
        ("train-images-idx3-ubyte", "0x00000803"),
        lambda t: write_mnist(t / "mnist", train_images_idx3_ubyte="magic"),
    ),
    CliCase(
        "mnist-not-gzip",
        ["train", *sets(["data.name=mnist", "data.root=mnist"])],
        ("t10k-labels-idx1-ubyte.gz",),
        lambda t: write_mnist(t / "mnist", t10k_labels_idx1_ubyte="not-gzip"),
    ),
    CliCase(
        "mnist-empty",
        ["train", *sets(["data.name=mnist", "data.root=mnist"])],
        ("train-images-idx3-ubyte", "no images"),
        lambda t: write_mnist(t / "mnist", 0, 2, train_labels_idx1_ubyte=np.zeros(0, np.uint8)),
    ),
    CliCase(
        "mnist-label-out-of-range",
        ["train", *sets(["data.name=mnist", "data.root=mnist"])],
        ("t10k-labels-idx1-ubyte", "12", "expected 0..9"),
        lambda t: write_mnist(t / "mnist", t10k_labels_idx1_ubyte=np.array([12, 1], np.uint8)),
    ),
    CliCase(
        "cifar-missing",
        ["train", *sets(["data.name=cifar10", "data.root=nodata"])],
        ("data_batch_1", "test_batch", "cs.toronto.edu"),
    ),
    CliCase(
        "cifar-truncated",
        ["train", *sets(["data.name=cifar10", "data.root=cifar"])],
        ("data_batch_3",),
        lambda t: write_cifar10(t / "cifar", data_batch_3=truncated_pickle()),
    ),
    CliCase(
        "cifar-wrong-format",
        ["train", *sets(["data.name=cifar10", "data.root=cifar"])],
        ("test_batch",),
        lambda t: write_cifar10(t / "cifar", test_batch=b"GIF89a, not a pickle"),
    ),
    CliCase(
        "cifar-wrong-shape",
        ["train", *sets(["data.name=cifar10", "data.root=cifar"])],
        ("data_batch_1",),
        lambda t: write_cifar10(
            t / "cifar",
            data_batch_1=pickle.dumps({b"labels": [0], b"data": np.zeros((1, 100), np.uint8)}),
        ),
    ),
    # --- checkpoints
    CliCase(
        "checkpoint-other-architecture-init",
        ["train", *sets([*TINY_RUN, "model.width=32", "train.init_from=RUN"])],
        ("train.init_from", "another architecture", "width 16 there, 32 here"),
    ),
    CliCase(
        "checkpoint-other-architecture-resume",
        ["train", "--resume", "edited"],
        ("checkpoint", "another architecture"),
        lambda t: None,  # the run is copied and its config edited by the test (needs RUN)
    ),
    CliCase(
        "checkpoint-not-a-checkpoint",
        ["train", *sets([*TINY_RUN, "train.init_from=junk.pt"])],
        ("train.init_from", "junk.pt", "not a robustlab checkpoint"),
        lambda t: write(t / "junk.pt", b"\x00junk" * 50),
    ),
    # --- stores
    CliCase(
        "store-not-sqlite-runs",
        ["runs", "--store", "notes.db"],
        ("notes.db", "not a results store"),
        not_sqlite,
    ),
    CliCase(
        "store-not-sqlite-train",
        ["train", *sets([*TINY_RUN]), "--out", "r", "--store", "notes.db"],
        ("--store", "notes.db", "not a results store"),
        not_sqlite,
    ),
    CliCase(
        "store-not-sqlite-eval",
        ["eval", "RUN", "--store", "notes.db"],
        ("notes.db", "not a results store"),
        not_sqlite,
    ),
    CliCase(
        "store-other-program",
        ["show", "somerun", "--store", "other.db"],
        ("other.db", "contacts", "not a robustlab"),
        other_program_db,
    ),
    CliCase(
        "store-not-sqlite-sweep",
        ["sweep", "sweep.toml", "--out", "sweeps", "--store", "notes.db"],
        ("notes.db", "not a results store"),
        lambda t: (spec('[axes]\n"method.lam" = [1, 2]\n')(t), not_sqlite(t)),
    ),
    # --- outputs that cannot be written
    CliCase(  # issue 8 #11
        "out-is-a-file",
        ["train", *sets([*TINY_RUN]), "--out", "taken"],
        ("--out", "taken", "is a file"),
        lambda t: write(t / "taken", "a file\n"),
    ),
    CliCase(  # issue 8 #11
        "out-uncreatable",
        ["train", *sets([*TINY_RUN]), "--out", "blocker/run"],
        ("--out", "blocker", "is a file"),
        lambda t: write(t / "blocker", "a file\n"),
    ),
    CliCase(  # issue 8 #11
        "store-uncreatable",
        ["train", *sets([*TINY_RUN]), "--out", "r", "--store", "blocker/sub/s.db"],
        ("--store", "blocker", "is a file"),
        lambda t: write(t / "blocker", "a file\n"),
    ),
    CliCase(
        "out-read-only",
        ["train", *sets([*TINY_RUN]), "--out", "locked/run"],
        ("--out", "not writable"),
        monkeypatched=lambda mp, t: read_only(mp, t, "locked"),
    ),
    CliCase(
        "sweep-out-read-only",
        ["sweep", "sweep.toml", "--out", "locked/sweeps"],
        ("locked", "not writable"),
        spec('[axes]\n"method.lam" = [1, 2]\n'),
        monkeypatched=lambda mp, t: read_only(mp, t, "locked"),
    ),
    # --- sweep specs
    CliCase(
        "sweep-empty-axis",
        ["sweep", "sweep.toml", "--out", "sweeps"],
        ("axes.method.lam", "[]", "non-empty list"),
        spec('[axes]\n"method.lam" = []\n'),
    ),
    CliCase(
        "sweep-bad-axis-value",
        ["sweep", "sweep.toml", "--out", "sweeps"],
        ("method.lam", "-1", ">= 0"),
        spec('[axes]\n"method.lam" = [1, -1]\n'),
    ),
    # --- eval of models from outside a run (issue 8 #4, #10, #11)
    CliCase(  # issue 8 #11
        "eval-unknown-device", ["eval", "RUN", "--device", "gpu"], ("--device", "gpu", "cpu, cuda")
    ),
    CliCase(  # issue 8 #10
        "eval-model-does-not-fit",
        ["eval", "misfits:cifar_sized", "--data", "synthetic", "--eps", "0.1", "--n", "8"],
        ("misfits:cifar_sized", "takes 3072 features, the data has 192"),
        lambda t: write(t / "misfits.py", MISFITS),
        modules=("misfits",),
    ),
    CliCase(  # issue 8 #4
        "eval-state-of-another-model",
        EVAL_WITH_STATE,
        ("state.pt", "another model"),
        state_of_another_model,
        modules=("misfits",),
    ),
    CliCase(  # issue 8 #21
        "eval-model-arg-malformed",
        ["eval", "misfits:small", "--model-arg", "width", "--data", "synthetic", "--eps", "0.1"],
        ("--model-arg", "width", "KEY=VALUE"),
        lambda t: write(t / "misfits.py", MISFITS),
        modules=("misfits",),
    ),
    CliCase("eval-missing-model", ["eval", "nowhere"], ("nowhere", "not found")),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    code = main(
        [
            "train",
            *sets([*TINY_RUN]),
            "--out",
            str(root / "run"),
            "--store",
            str(root / "store.db"),
            "--quiet",
        ]
    )
    assert code == 0
    return root / "run"


def _arg(arg: str, run: Path) -> str:
    return arg.replace("RUN", str(run)) if "RUN" in arg and "RUNS" not in arg else arg


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_bad_input(
    case: CliCase,
    trained_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in case.modules:
        monkeypatch.delitem(sys.modules, module, raising=False)
    if case.setup is not None:
        case.setup(tmp_path)
    if case.id == "checkpoint-other-architecture-resume":
        _copy_with_other_width(trained_run, tmp_path / "edited")
    if case.monkeypatched is not None:
        case.monkeypatched(monkeypatch, tmp_path)
    argv = [_arg(a, trained_run) for a in case.argv]
    store = trained_run.parent / "store.db"
    before = snapshot(tmp_path), snapshot(trained_run), store.read_bytes()
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    finally:
        for module in case.modules:
            sys.modules.pop(module, None)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith(f"robustlab {argv[0]}: error: "), err
    assert "Traceback" not in err
    for fragment in case.fragments:
        assert fragment in err, (fragment, err)
    assert (snapshot(tmp_path), snapshot(trained_run), store.read_bytes()) == before


def _copy_with_other_width(run: Path, to: Path) -> None:
    """A copy of ``run`` whose config.toml says width 32 while its checkpoints hold width 16
    (an edited config, or checkpoints copied between runs)."""
    import shutil

    shutil.copytree(run, to)
    config = (to / "config.toml").read_text()
    assert "width = 16" in config
    (to / "config.toml").write_text(config.replace("width = 16", "width = 32"))


# A few through the real entry point, as a user's shell runs them.
# (Each costs a process start and robustlab's imports: one in the default run, all under -m slow.)
PROCESS_CASES = [
    pytest.param(
        "malformed-toml", ["train", "bad.toml"], ("bad.toml", "not valid TOML"), id="malformed-toml"
    ),
    pytest.param(
        "unknown-key",
        ["config", "--set", "train.lrr=0.1"],
        ("train.lrr", "'train.lr'"),
        id="unknown-key",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "not-sqlite",
        ["runs", "--store", "notes.db"],
        ("notes.db", "not a results store"),
        id="not-sqlite",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("name", "argv", "fragments"), PROCESS_CASES)
def test_the_entry_point_refuses_bad_input(
    tmp_path: Path, name: str, argv: list[str], fragments: tuple[str, ...]
) -> None:
    write(tmp_path / "bad.toml", "[attack]\neps = 8/255\n")
    not_sqlite(tmp_path)
    before = snapshot(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "robustlab", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr
    assert snapshot(tmp_path) == before


# A closed pipe (`config --keys | head -1`, issue 8 #11): tests/test_cli_errors.py's
# test_a_closed_pipe_ends_quietly.


# ---------------------------------------------------------------------------------------------
# The library matrix


def _net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes)).eval()


def _points(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.arange(n) % 10


def _attack(x: torch.Tensor | None = None, y: torch.Tensor | None = None, name: str = "pgd"):
    from robustlab.attacks import create_attack

    clean_x, clean_y = _points()
    attack = create_attack(name, eps=0.1, steps=2)
    return attack(_net(), clean_x if x is None else x, clean_y if y is None else y)


def _evaluate(
    x: torch.Tensor | None = None, y: torch.Tensor | None = None, batch_size: int = 4, **kw: Any
):
    from robustlab.attacks import create_attack
    from robustlab.evaluation import evaluate_robustness

    clean_x, clean_y = _points()
    return evaluate_robustness(
        _net(),
        clean_x if x is None else x,
        clean_y if y is None else y,
        create_attack("pgd", eps=0.1, steps=2),
        batch_size=batch_size,
        **kw,
    )


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    return x


def _load_spec(tmp: Path, body: str):
    from robustlab.sweep.spec import load_spec

    spec(body)(tmp)
    return load_spec(tmp / "sweep.toml")


def _init_from_other_architecture(tmp: Path, run: Path):
    from robustlab.config import build_config
    from robustlab.training.runner import prepare

    return prepare(build_config(overrides=[*TINY_RUN, "model.width=32", f"train.init_from={run}"]))


def _resume_other_architecture(tmp: Path, run: Path):
    from robustlab.rundir import RunDirectory
    from robustlab.training.runner import check_resumable, prepare

    _copy_with_other_width(run, tmp / "edited")
    edited = RunDirectory.open(tmp / "edited")
    return check_resumable(prepare(edited.read_config()), edited)


@dataclass(frozen=True)
class LibraryCase:
    """``call(tmp, run)`` must raise ``error`` with a one-line message holding ``fragments``."""

    id: str
    call: Callable[[Path, Path], Any]
    error: type[RobustlabError]
    fragments: tuple[str, ...]


LIBRARY_CASES = [
    # config
    LibraryCase(
        "config-unknown-key",
        lambda t, r: __import__("robustlab.config").config.build_config(overrides=["train.lrr=1"]),
        ConfigError,
        ("train.lrr", "'train.lr'"),
    ),
    LibraryCase(
        "config-malformed-toml",
        lambda t, r: (
            write(t / "bad.toml", "epochs = = 3\n"),
            __import__("robustlab.config").config.load_toml(t / "bad.toml"),
        ),
        ConfigError,
        ("bad.toml", "not valid TOML"),
    ),
    # datasets
    LibraryCase(
        "data-mnist-missing",
        lambda t, r: _dataset("mnist", t / "none"),
        DataNotFoundError,
        ("train-images-idx3-ubyte",),
    ),
    LibraryCase(
        "data-mnist-truncated",
        lambda t, r: (write_mnist(t, train_labels_idx1_ubyte="truncate"), _dataset("mnist", t)),
        DataFormatError,
        ("train-labels-idx1-ubyte",),
    ),
    LibraryCase(
        "data-mnist-empty-test",
        lambda t, r: (
            write_mnist(t, 5, 0, t10k_labels_idx1_ubyte=np.zeros(0, np.uint8)),
            _dataset("mnist", t),
        ),
        DataFormatError,
        ("t10k-images-idx3-ubyte", "no images"),
    ),
    LibraryCase(
        "data-cifar-wrong-format",
        lambda t, r: (
            write_cifar10(t, data_batch_2=pickle.dumps([1, 2, 3])),
            _dataset("cifar10", t),
        ),
        DataFormatError,
        ("data_batch_2",),
    ),
    # attacks
    LibraryCase(
        "attack-unknown-name",
        lambda t, r: __import__("robustlab.attacks").attacks.create_attack("pgdd"),
        UnknownNameError,
        ("pgdd", "'pgd'"),
    ),
    LibraryCase(  # issue 8 #20
        "attack-old-option-name",
        lambda t, r: __import__("robustlab.attacks").attacks.create_attack("apgd", n_iter=5),
        ConfigError,
        ("n_iter", "renamed to 'steps'"),
    ),
    LibraryCase(
        "attack-images-above-1",
        lambda t, r: _attack(x=_points()[0] + 0.5),
        AttackInputError,
        ("[0, 1]",),
    ),
    LibraryCase(
        "attack-images-nan",
        lambda t, r: _attack(x=_with_nan(_points()[0])),
        AttackInputError,
        ("nan",),
    ),
    LibraryCase(
        "attack-labels-out-of-range",
        lambda t, r: _attack(y=torch.full((8,), 10)),
        AttackInputError,
        ("labels must be < 10",),
    ),
    LibraryCase(
        "attack-labels-negative",
        lambda t, r: _attack(y=torch.full((8,), -1)),
        AttackInputError,
        ("labels must be >= 0",),
    ),
    # evaluate_robustness
    LibraryCase(
        "evaluate-images-above-1",
        lambda t, r: _evaluate(x=_points()[0] * 2),
        AttackInputError,
        ("[0, 1]",),
    ),
    LibraryCase(
        "evaluate-images-nan",
        lambda t, r: _evaluate(x=_with_nan(_points()[0]), state_path=t / "state.pt"),
        AttackInputError,
        ("nan",),
    ),
    LibraryCase(
        "evaluate-labels-out-of-range",
        lambda t, r: _evaluate(y=torch.arange(8) + 5),
        AttackInputError,
        ("labels must be < 10", "12"),
    ),
    LibraryCase(
        "evaluate-labels-negative",
        lambda t, r: _evaluate(y=torch.arange(8) - 1),
        AttackInputError,
        ("labels must be >= 0", "-1"),
    ),
    LibraryCase(
        "evaluate-labels-float",
        lambda t, r: _evaluate(y=torch.zeros(8)),
        AttackInputError,
        ("labels must be integers", "float32"),
    ),
    LibraryCase(
        "evaluate-images-int64",
        lambda t, r: _evaluate(x=(_points()[0] * 255).long()),
        AttackInputError,
        ("uint8", "int64"),
    ),
    LibraryCase(
        "evaluate-length-mismatch",
        lambda t, r: _evaluate(y=torch.arange(5)),
        AttackInputError,
        ("8 images", "5 labels"),
    ),
    LibraryCase(
        "evaluate-empty",
        lambda t, r: _evaluate(x=_points()[0][:0], y=torch.zeros(0, dtype=torch.long)),
        AttackInputError,
        ("no points",),
    ),
    LibraryCase(
        "evaluate-batch-size-zero",
        lambda t, r: _evaluate(batch_size=0),
        ConfigError,
        ("batch_size", "0", "> 0"),
    ),
    # checkpoints, stores, sweeps
    LibraryCase(
        "checkpoint-other-architecture-init",
        _init_from_other_architecture,
        ConfigError,
        ("another architecture",),
    ),
    LibraryCase(
        "checkpoint-other-architecture-resume",
        _resume_other_architecture,
        CheckpointError,
        ("another architecture",),
    ),
    LibraryCase(
        "store-not-sqlite",
        lambda t, r: (not_sqlite(t), _store(t / "notes.db")),
        RunError,
        ("notes.db", "not a results store"),
    ),
    LibraryCase(
        "sweep-empty-axis",
        lambda t, r: _load_spec(t, '[axes]\n"model.width" = []\n'),
        ConfigError,
        ("axes.model.width", "non-empty list"),
    ),
]


def _dataset(name: str, root: Path):
    from robustlab.data import create_dataset

    return create_dataset(name, root=root)


def _store(path: Path):
    from robustlab.store import ResultsStore

    return ResultsStore(path)


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c.id for c in LIBRARY_CASES])
def test_library_refuses_bad_input(
    case: LibraryCase, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = trained_run.parent / "store.db"
    before_run, before_store = snapshot(trained_run), store.read_bytes()
    with pytest.raises(case.error) as caught:
        case.call(tmp_path, trained_run)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in case.fragments:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "state.pt").exists()  # an evaluation refused saves no state
    assert not (tmp_path / "runs").exists()
    assert (snapshot(trained_run), store.read_bytes()) == (before_run, before_store)


# What each of these did before issue 14 (the code was fixed, not the test).
FIXED = {
    # CLI
    "checkpoint-other-architecture-resume": "a 10-line torch traceback, exit 1, after run.json was rewritten",
    "store-not-sqlite-eval": "ran the whole evaluation, printed its header, then refused",
    "eval-state-of-another-model": "two lines: the evaluation's header before the refusal",
    "sweep-bad-axis-value": "refused after creating ./runs/robustlab.db",
    "sweep-out-read-only": "no check: the sweep started writing into the directory",
    "mnist-empty": "a misleading data.val_size error ('a count in [0, -1]'), NaN statistics",
    "range-subnormal-eps": "accepted; its step underflowed to 0 and config.toml did not read back",
    "contra-eval-norm-inherits-l2-budget": "accepted; config.toml did not read back",
    # library
    "evaluate-labels-negative": "IndexError from cross_entropy",
    "evaluate-labels-float": "RuntimeError from cross_entropy",
    "evaluate-images-int64": "RuntimeError from the model's first layer",
    "evaluate-length-mismatch": "a message about the model's logits, not the labels",
    "evaluate-empty": "no error: accuracies of NaN",
    "evaluate-batch-size-zero": "ValueError from range()",
    "data-mnist-empty-test": "no error: a dataset with an empty test split",
    "checkpoint-other-architecture-resume#library": "RuntimeError listing every tensor",
}


def test_the_fixed_cases_are_in_the_matrix() -> None:
    ids = {c.id for c in CLI_CASES} | {f"{c.id}#library" for c in LIBRARY_CASES}
    ids |= {c.id for c in LIBRARY_CASES}
    assert set(FIXED) <= ids


def test_an_attack_on_an_empty_batch_returns_it() -> None:
    """Not bad input: a batch op on zero points (the cascade's remainder) returns zero points,
    as torch's layers do (it raised a RuntimeError from aminmax before issue 14)."""
    from robustlab.attacks import create_attack, list_attacks

    x = torch.zeros(0, 1, 8, 8)
    for name in list_attacks():
        x_adv = create_attack(name, eps=0.1)(_net(), x, torch.zeros(0, dtype=torch.long))
        assert x_adv.shape == x.shape


def test_the_matrix_has_at_least_40_cases() -> None:
    assert len(CLI_CASES) + len(PROCESS_CASES) + len(LIBRARY_CASES) >= 40
    assert len({c.id for c in CLI_CASES}) == len(CLI_CASES)
    assert len({c.id for c in LIBRARY_CASES}) == len(LIBRARY_CASES)


# ---------------------------------------------------------------------------------------------
# A batch larger than the dataset: clamped, not refused (documented in the README)


def test_a_batch_larger_than_the_data_is_one_batch_of_all_of_it() -> None:
    """PyTorch's DataLoader (``drop_last=False``) yields one batch of the whole set when the batch
    size exceeds it, and small-n experiments (``data.train_size`` below the batch size, Xing et
    al. Table 3) rely on that full-batch step: robustlab does the same, for training batches and
    for evaluation batches, instead of refusing."""
    from robustlab.data import DeviceLoader

    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10) % 10
    loader = DeviceLoader(images, labels, batch_size=1000, shuffle=True, seed=3)
    batches = list(loader.epoch(0))
    assert len(loader) == 1 and len(batches) == 1
    x, y = batches[0]
    assert x.shape == (10, 1, 8, 8) and sorted(y.tolist()) == labels.tolist()
    whole = _evaluate(batch_size=8)
    huge = _evaluate(batch_size=10_000)
    assert torch.equal(whole.robust, huge.robust) and torch.equal(whole.correct, huge.correct)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_labels_of_any_integer_dtype_are_taken(dtype: torch.dtype) -> None:
    # Not bad input: int32 labels (as numpy and many loaders give) made cross_entropy raise
    # inside the attacks and the evaluation before issue 14.
    reference = _evaluate()
    result = _evaluate(y=_points()[1].to(dtype))
    assert torch.equal(result.correct, reference.correct)
    assert torch.equal(result.robust, reference.robust)
    assert torch.equal(_attack(y=_points()[1].to(dtype)), _attack())
