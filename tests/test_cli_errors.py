"""Bad input on the command line: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, sets
from robustlab.cli.main import main

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` with (size, mtime) for files: any write changes it."""
    out: dict[str, tuple[int, int] | None] = {}
    for path in root.rglob("*"):
        stat = path.stat()
        out[str(path.relative_to(root))] = (
            (stat.st_size, stat.st_mtime_ns) if path.is_file() else None
        )
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run directory (outside every test's tmp_path)."""
    root = tmp_path_factory.mktemp("trained")
    out, store = root / "run", root / "store.db"
    code = main(["train", *sets(TINY_RUN), "--out", str(out), "--store", str(store), "--quiet"])
    assert code == 0
    assert (out / "config.toml").is_file() and (out / "checkpoints" / "last.pt").is_file()
    return out


@pytest.fixture
def rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., str]:
    """``rejects(argv, *fragments)``: run the CLI in tmp_path and check it refused cleanly.

    Returns the one stderr line. Files a case needs must exist before the call.
    """
    monkeypatch.chdir(tmp_path)

    def check(argv: list[str], *fragments: str) -> str:
        capsys.readouterr()
        before = snapshot(tmp_path)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, err
        assert out == ""
        assert err.endswith("\n")
        assert len(err.splitlines()) == 1, err
        assert "Traceback" not in err
        assert err.startswith("robustlab")
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        assert snapshot(tmp_path) == before  # no runs/, no store, no --out directory
        return err.strip()

    return check


# ---------------------------------------------------------------------------------------------
# train: every kind of bad config

BAD_TRAIN = [
    # (--set overrides, fragments the one line must contain: key, value, what is allowed)
    (["attack.epss=0.1"], ["attack.epss", "0.1", "did you mean 'attack.eps'"]),
    (["train.lrr=0.1"], ["train.lrr", "0.1", "'train.lr'"]),
    (["eps=0.1"], ["eps", "0.1", "'attack.eps'"]),
    (["bogus=1"], ["bogus", "1", "valid keys here"]),
    (["train.epochs=ten"], ["train.epochs", "ten", "integer"]),
    (["train.epochs=2.5"], ["train.epochs", "2.5", "integer"]),
    (["attack.random_start=maybe"], ["attack.random_start", "maybe", "true or false"]),
    (["attack.eps=abc"], ["attack.eps", "abc", "number"]),
    (["attack.eps=-0.1"], ["attack.eps", "-0.1", ">= 0"]),
    (["attack.eps=1.5"], ["attack.eps", "1.5", "Linf"]),
    (["model.width=0"], ["model.width", "0", "> 0"]),
    (["model.width=-1"], ["model.width", "-1", "> 0"]),
    (["method.lam=-1"], ["method.lam", "-1", ">= 0"]),
    (["attack.steps=0"], ["attack.steps", "0", "> 0"]),
    (["eval.steps=0"], ["eval.steps", "0", "> 0"]),
    (["train.batch_size=0"], ["train.batch_size", "0", "> 0"]),
    (["model.name=resnet9000"], ["model.name", "resnet9000", "mlp", "wrn", "resnet_cifar"]),
    (["method.name=trades9000"], ["method.name", "trades9000", "clean", "pgd_at"]),
    (["data.name=imagenet9000"], ["data.name", "imagenet9000", "cifar10", "digits", "synthetic"]),
    (["attack.norm=L3"], ["attack.norm", "L3", "Linf", "L2"]),
    (["train.schedule=step"], ["train.schedule", "step", "piecewise", "cosine"]),
    (["train.milestones=[10,4000]"], ["train.milestones", "4000", "train.epochs="]),
    (["data.val_size=1.0"], ["data.val_size", "1.0", "[0, 1)"]),
    (["model=3"], ["model", "3", "table of keys"]),
    (["noequals"], ["--set", "noequals", "KEY=VALUE"]),
    # checks that need the data or the model family: still before anything is written
    (["data.name=synthetic", "data.val_size=100000"], ["data.val_size", "100000"]),
    (["model.options.nosuch=1"], ["model.options.nosuch", "1", "mlp takes options"]),
    (
        ["data.name=synthetic", "data.options.n_trian=9"],
        ["data.options.n_trian", "9", "did you mean 'n_train'"],
    ),
]


@pytest.mark.parametrize(
    ("overrides", "fragments"), BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN]
)
def test_train_rejects_bad_config(rejects, overrides: list[str], fragments: list[str]) -> None:
    rejects(["train", *sets(overrides)], *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_rejects_cuda_without_gpu(rejects) -> None:
    rejects(["train", "--set", "device=cuda"], "device", "cuda")


def test_train_rejects_missing_config_file(rejects) -> None:
    rejects(["train", "missing.toml"], "config", "missing.toml", "no such file")


def test_train_rejects_invalid_toml(rejects, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[attack]\neps = 8/255\n")
    line = rejects(["train", "bad.toml"], "config", "bad.toml", "not valid TOML")
    assert line.count("\n") == 0


def test_train_rejects_bad_value_in_file(rejects, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('[attack]\neps = "-8/255"\n')
    rejects(["train", "run.toml"], "attack.eps", "-0.031", ">= 0")


def test_set_overrides_a_good_file_with_a_bad_value(rejects, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[model]\nwidth = 8\n")
    rejects(["train", "run.toml", "--set", "model.width=0"], "model.width", "0")


def test_train_rejects_missing_dataset_files(rejects, tmp_path: Path) -> None:
    root = tmp_path / "nodata"
    line = rejects(
        ["train", "--set", "data.name=cifar10", "--set", f"data.root={root}"],
        str(root / "cifar-10-batches-py" / "data_batch_1"),
        str(root / "cifar-10-batches-py" / "test_batch"),
        CIFAR10_URL,
    )
    assert "data.root" in line
    assert not root.exists()


def test_train_resume_with_set_is_rejected(rejects, trained_run: Path) -> None:
    before = snapshot(trained_run)
    rejects(
        ["train", "--resume", str(trained_run), "--set", "train.epochs=2"],
        "--resume",
        str(trained_run),
    )
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("extra", [["--out", "elsewhere"], ["run.toml"]])
def test_train_resume_with_out_or_config_is_rejected(
    rejects, tmp_path: Path, trained_run: Path, extra: list[str]
) -> None:
    (tmp_path / "run.toml").write_text("seed = 1\n")
    rejects(["train", "--resume", str(trained_run), *extra], "--resume")


def test_train_resume_of_a_non_run_is_rejected(rejects, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    rejects(["train", "--resume", "empty"], "empty", "not a run directory")


def test_train_out_holding_a_run_is_left_untouched(
    rejects, tmp_path: Path, trained_run: Path
) -> None:
    existing = tmp_path / "existing"
    shutil.copytree(trained_run, existing)
    config = (existing / "config.toml").read_text()
    rejects(["train", *sets(TINY_RUN), "--out", "existing"], "--out", "existing", "--resume")
    assert (existing / "config.toml").read_text() == config


# ---------------------------------------------------------------------------------------------
# eval, show, runs, demo


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--eps", "-1"], ["--eps", "-1", ">= 0"]),
        (["--eps=-8/255"], ["--eps", "-8/255", ">= 0"]),  # argparse: -8/255 alone looks like a flag
        (["--eps", "2"], ["--eps", "2", "Linf"]),
        (["--eps", "abc"], ["--eps", "abc", "number"]),
        (["--norm", "L3"], ["--norm", "L3", "Linf"]),
        (["--steps", "0"], ["--steps", "0", "> 0"]),
        (["--restarts", "0"], ["--restarts", "0", "> 0"]),
        (["--n", "0"], ["--n", "0", "> 0"]),
        (["--batch-size", "0"], ["--batch-size", "0", "> 0"]),
        (["--attack", "nosuch"], ["nosuch", "pgd"]),
        (["--steps", "many"], ["--steps", "many"]),  # argparse: SystemExit(2)
    ],
)
def test_eval_rejects_bad_arguments(
    rejects, trained_run: Path, args: list[str], fragments: list[str]
) -> None:
    before = snapshot(trained_run)
    rejects(["eval", str(trained_run), *args], *fragments)
    assert snapshot(trained_run) == before


def test_eval_of_a_non_run_directory(rejects, tmp_path: Path) -> None:
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("hello\n")
    rejects(["eval", "notarun"], "notarun", "not a run directory", "config.toml")


def test_eval_of_a_missing_directory(rejects) -> None:
    rejects(["eval", "nowhere"], "nowhere", "not found", "run directory", "TorchScript")


def test_show_unknown_run_without_store(rejects) -> None:
    rejects(["show", "nosuch"], "nosuch", "runs/robustlab.db", "does not exist")


def test_show_unknown_run_in_a_store(rejects, trained_run: Path) -> None:
    store = trained_run.parent / "store.db"
    assert store.is_file()
    rejects(["show", "nosuch", "--store", str(store)], "nosuch", "no such run", str(store))


@pytest.mark.parametrize("args", [[], ["--store", "elsewhere/results.db"]])
def test_runs_with_a_missing_store(rejects, args: list[str]) -> None:
    store = args[-1] if args else "runs/robustlab.db"
    rejects(["runs", *args], store, "does not exist")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "attack.eps=-1"], ["attack.eps", "-1", ">= 0"]),
        (["--set", "attack.epss=0.1"], ["attack.epss", "did you mean 'attack.eps'"]),
        (["--set", "model.name=nosuch"], ["model.name", "nosuch", "mlp"]),
        (["--epochs", "0"], ["train.epochs", "0", "> 0"]),
    ],
)
def test_demo_rejects_bad_settings(rejects, args: list[str], fragments: list[str]) -> None:
    rejects(["demo", *args], *fragments)


# ---------------------------------------------------------------------------------------------
# argparse usage errors: one line too


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--bogus"], "--bogus"),
        (["eval"], "MODEL"),
        (["nosuchcommand"], "nosuchcommand"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_are_one_line(rejects, argv: list[str], fragment: str) -> None:
    rejects(argv, fragment, "--help")


# ---------------------------------------------------------------------------------------------
# The real entry points


def _check_process(result: subprocess.CompletedProcess[str], cwd: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "attack.epss" in result.stderr and "0.1" in result.stderr
    assert "did you mean 'attack.eps'" in result.stderr
    assert list(cwd.iterdir()) == []


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "robustlab", "train", "--set", "attack.epss=0.1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _check_process(result, tmp_path)


def test_console_script_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "robustlab"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    result = subprocess.run(
        [str(script), "train", "--set", "attack.epss=0.1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _check_process(result, tmp_path)


# ---------------------------------------------------------------------------------------------
# Point 11: stores, devices and output locations that cannot be used; closed pipes


@pytest.fixture
def not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not a database\n")
    return path


@pytest.mark.parametrize("command", [["runs"], ["show", "somerun"]])
def test_a_store_that_is_not_sqlite(rejects, not_sqlite: Path, command: list[str]) -> None:
    rejects([*command, "--store", not_sqlite.name], "--store", "notes.db", "not a results store")


def test_train_with_a_store_that_is_not_sqlite(rejects, not_sqlite: Path) -> None:
    # Refused before the run directory is made (rejects checks nothing was written).
    rejects(
        ["train", *sets(TINY_RUN), "--out", "r", "--store", "notes.db"],
        "--store",
        "notes.db",
        "not a results store",
    )


def test_a_store_of_another_program(rejects, tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE contacts (name TEXT)")
    before = (tmp_path / "other.db").read_bytes()
    rejects(["runs", "--store", "other.db"], "other.db", "contacts", "not a robustlab")
    rejects(["train", *sets(TINY_RUN), "--out", "r", "--store", "other.db"], "other.db")
    assert (tmp_path / "other.db").read_bytes() == before


def test_a_store_that_is_a_directory(rejects, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    rejects(["runs", "--store", "adir"], "--store", "adir", "is a directory")
    rejects(["train", *sets(TINY_RUN), "--out", "r", "--store", "adir"], "adir", "directory")


def test_eval_rejects_an_unknown_device(rejects, trained_run: Path) -> None:
    # train checked `device`; eval passed --device straight to torch.device (a traceback).
    rejects(["eval", str(trained_run), "--device", "gpu"], "--device", "gpu", "auto, cpu, cuda")


def test_train_out_that_is_a_file(rejects, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file\n")
    rejects(["train", *sets(TINY_RUN), "--out", "taken"], "--out", "taken", "is a file")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--out", "blocker/run"], "--out"),
        (["--out", "r", "--store", "blocker/sub/store.db"], "--store"),
    ],
)
def test_train_outputs_that_cannot_be_created(
    rejects, tmp_path: Path, flags: list[str], fragment: str
) -> None:
    # A regular file where a directory must be made: refused even for root (tests run as
    # root, for whom a read-only directory is no obstacle).
    (tmp_path / "blocker").write_text("a file\n")
    rejects(["train", *sets(TINY_RUN), *flags], fragment, "blocker", "is a file")


def test_demo_out_that_cannot_be_created(rejects, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file\n")
    rejects(["demo", "--epochs", "1", "--out", "blocker/demo"], "--out", "blocker", "is a file")


def test_train_out_in_a_read_only_directory(
    rejects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, who may write into a read-only directory: simulate one for the check.
    import robustlab.rundir

    (tmp_path / "locked").mkdir()
    locked = str(tmp_path / "locked")
    real_access = os.access
    monkeypatch.setattr(
        robustlab.rundir.os,
        "access",
        lambda path, mode: str(path) != locked and real_access(path, mode),
    )
    rejects(["train", *sets(TINY_RUN), "--out", "locked/run"], "--out", "not writable")


def _with_closed_stdout(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader has already gone, as `| head -1` is once
    head has its line: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "robustlab", *argv],
            cwd=cwd,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize("argv", [["config", "--keys"], ["show", "RUN", "--store", "STORE"]])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, trained_run: Path, argv: list[str]) -> None:
    store = trained_run.parent / "store.db"
    argv = [{"RUN": str(trained_run), "STORE": str(store)}.get(a, a) for a in argv]
    code, err = _with_closed_stdout(argv, tmp_path)
    assert (code, err) == (0, "")
