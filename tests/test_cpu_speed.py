"""Issue 14 points 9-11, CPU speed without tuning: the CLI applies glibc's tuned allocator
settings itself (re-executing once), ``threads`` / ``--threads`` with a default from the model's
size, sweep workers sharing the cores, one store transaction per epoch, lazy command imports."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import sets
from robustlab import _allocator, _threads
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError
from robustlab.models import create_model

# -- allocator: the re-exec -----------------------------------------------------------------


def _recorder(calls: list) -> object:
    return lambda path, argv: calls.append((path, argv))


def test_reexec_fills_in_missing_settings_keeps_the_users_and_marks_the_process(monkeypatch):
    monkeypatch.setattr(_allocator, "is_glibc", lambda: True)
    environ = {"MALLOC_TOP_PAD_": "1", "HOME": "/h"}
    calls: list = []
    argv = ["python", "-X", "importtime", "-m", "robustlab", "train", "--set", "seed=1"]
    assert _allocator.reexec_tuned(environ, argv, _recorder(calls))
    assert calls == [(sys.executable, [sys.executable, *argv[1:]])]  # same argv, same options
    assert environ["MALLOC_TOP_PAD_"] == "1"  # exported by the user: kept
    assert environ["MALLOC_MMAP_THRESHOLD_"] == _allocator.TUNED["MALLOC_MMAP_THRESHOLD_"]
    assert environ["MALLOC_TRIM_THRESHOLD_"] == _allocator.TUNED["MALLOC_TRIM_THRESHOLD_"]
    assert environ[_allocator.MARKER] == "1"
    # The re-executed process never re-executes again, even if a setting went missing.
    del environ["MALLOC_TOP_PAD_"]
    assert not _allocator.reexec_tuned(environ, argv, _recorder(calls)) and len(calls) == 1


@pytest.mark.parametrize(
    "environ, glibc, argv",
    [
        ({_allocator.OPT_OUT: "1"}, True, ["python", "-m", "robustlab"]),
        (dict(_allocator.TUNED), True, ["python", "-m", "robustlab"]),  # all set (the Makefile)
        ({}, False, ["python", "-m", "robustlab"]),  # musl, macOS: they read no MALLOC_*
        ({}, True, ["python", "-"]),  # a script read from stdin cannot be replayed
    ],
    ids=["opted-out", "already-tuned", "not-glibc", "stdin-script"],
)
def test_reexec_is_skipped(monkeypatch, environ, glibc, argv):
    monkeypatch.setattr(_allocator, "is_glibc", lambda: glibc)
    calls: list = []
    before = dict(environ)
    assert not _allocator.reexec_tuned(environ, argv, _recorder(calls))
    assert calls == [] and environ == before


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "ROBUSTLAB_"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


TINY = [
    "data.name=synthetic",
    "data.options.n_train=128",
    "data.options.n_test=32",
    "data.val_size=32",
    "model.width=8",
    "train.batch_size=64",
    "attack.steps=1",
    "eval.steps=1",
    "eval.n_train=0",
    "eval.lipschitz_n=0",
    "eval.final=false",
    "device=cpu",
]


@pytest.mark.skipif(not _allocator.is_glibc(), reason="glibc only")
def test_the_command_runs_with_the_tuned_allocator_and_records_it(tmp_path):
    """`robustlab train` started without MALLOC_*: the process that trains has them (run.json
    records the settings and torch's threads); exit codes as before (0, and 2 with one line
    for a wrong key, nothing written). The opt-out is the unit test's above."""
    outputs = ["--store", str(tmp_path / "s.db"), "--quiet"]
    base = [sys.executable, "-m", "robustlab", "train", *sets([*TINY, "train.epochs=1"])]
    done = subprocess.run(
        [*base, "--threads", "1", "--out", str(tmp_path / "a"), *outputs],
        env=_bare_env(), cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["malloc"] == _allocator.TUNED and info["threads"] == 1
    wrong = subprocess.run(
        [*base, "--set", "train.epochz=3", "--out", str(tmp_path / "c"), *outputs],
        env=_bare_env(), cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "train.epochz" in wrong.stderr and not (tmp_path / "c").exists()


@pytest.mark.skipif(not _allocator.is_glibc(), reason="glibc only")
def test_sigterm_reaches_the_reexecuted_run_which_marks_itself_interrupted(tmp_path):
    """The re-exec replaces the process (no parent in between): the pid that was started is
    the one training, a SIGTERM to it marks the run interrupted, exit code 128 + 15."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "robustlab", "train", *sets([*TINY, "train.epochs=100000"]),
         "--out", str(run_dir), "--store", str(tmp_path / "s.db"), "--quiet"],
        env=_bare_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (
            not (run_dir / "metrics.jsonl").is_file()
            or not (run_dir / "metrics.jsonl").read_text().strip()
        ):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.1)
        info = json.loads((run_dir / "run.json").read_text())
        assert info["pid"] == process.pid  # the same process, re-executed in place
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_a_command_naming_one_subcommand_imports_only_it():
    """`robustlab runs` (or `sweep`) starts without importing torch; --help lists every command."""
    code = (
        "import sys; from robustlab.cli.main import build_parser; build_parser(['runs']); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_bare_env()
    )
    assert done.stdout.strip() == "False", done.stderr
    from robustlab.cli.main import COMMAND_MODULES, build_parser

    choices = build_parser([])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"train", "eval", "diagnose", "sweep", "runs"} <= set(choices)
    assert len(choices) >= len(COMMAND_MODULES)


# -- threads --------------------------------------------------------------------------------


def test_threads_key_rejects_negative_counts_in_one_line(tmp_path, capsys):
    assert build_config(None, ["threads=3"]).threads == 3
    with pytest.raises(ConfigError, match="threads"):
        build_config(None, ["threads=-1"])
    assert main(["train", "--threads", "-2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0] and ">= 0" in err[0]
    assert not (tmp_path / "r").exists()


def test_default_threads_follow_the_work_of_a_training_batch():
    small = create_model("mlp", 10, 1, 8, width=64)
    large = create_model("preact_resnet18", 10, 3, 32, width=16)
    small_flops = _threads.forward_flops(small, (1, 8, 8))
    large_flops = _threads.forward_flops(large, (3, 32, 32))
    # Counted on the meta device: a linear layer's 2 x in x out per example.
    assert small_flops >= 2 * 64 * 64 and large_flops > 1000 * small_flops

    def auto(model, shape, batch=128, device="cpu", load=0.0):
        return _threads.resolve_threads(0, model, shape, batch, device, cores=4, load=load)

    assert auto(small, (1, 8, 8)) == 1
    assert auto(large, (3, 32, 32)) == 4
    assert auto(large, (3, 32, 32), batch=1) == 1  # a batch of one image: little work
    assert auto(large, (3, 32, 32), load=1.5) == 3  # one core busy with other work
    assert auto(large, (3, 32, 32), load=9.0) == 1  # a busy machine: never 0
    assert auto(small, (1, 8, 8), device="cuda") == 4
    assert _threads.resolve_threads(3, small, (1, 8, 8), 128, "cpu", cores=4) == 3  # explicit
    assert _threads.auto_threads(_threads.FLOPS_PER_THREAD, 2) == 2
    assert _threads.auto_threads(_threads.FLOPS_PER_THREAD - 1, 2) == 1
    # A sweep worker's share of 2 of 4 cores, the other worker busy on its 2: the share is free.
    assert _threads.auto_threads(_threads.FLOPS_PER_THREAD, 2, load=2.0, machine=4) == 2
    assert _threads.auto_threads(_threads.FLOPS_PER_THREAD, 2, load=3.0, machine=4) == 1
    assert _threads.other_load() >= 0


def test_sweep_workers_share_the_cores_and_a_run_picks_within_its_share(monkeypatch):
    from robustlab.sweep.executors import ExecutorSettings
    from robustlab.sweep.executors.local import LocalExecutor

    monkeypatch.setattr("robustlab.sweep.executors.local.available_cores", lambda: 8)
    for workers, share in ((1, 8), (2, 4), (3, 2), (16, 1)):
        executor = LocalExecutor(ExecutorSettings(workers=workers, log_dir="."))
        assert executor.threads == share and workers * executor.threads <= max(8, workers)
    large = create_model("preact_resnet18", 10, 3, 32, width=16)
    assert _threads.resolve_threads(0, large, (3, 32, 32), 128, "cpu", cores=4, load=0) == 4


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_flag_reaches_torch_in_the_run_and_is_recorded(
    tmp_path, fast_run, restore_threads, threads
):
    out = tmp_path / "run"
    argv = ["train", *sets([*fast_run, "train.epochs=1", "eval.final=false"])]
    argv += ["--threads", str(threads), "--out", str(out), "--store", str(tmp_path / "s.db")]
    assert main([*argv, "--quiet"]) == 0
    assert torch.get_num_threads() == threads
    assert json.loads((out / "run.json").read_text())["threads"] == threads
    assert "threads = " + str(threads) in (out / "config.toml").read_text()


def test_auto_threads_give_a_small_model_one_thread(tmp_path, fast_run, restore_threads):
    torch.set_num_threads(2)
    out = tmp_path / "run"
    argv = ["train", *sets([*fast_run, "train.epochs=1", "eval.final=false"])]
    assert main([*argv, "--out", str(out), "--store", str(tmp_path / "s.db"), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["threads"] == 1


# -- per-epoch overhead ---------------------------------------------------------------------


def test_one_store_transaction_per_epoch_with_its_iteration_records(
    tmp_path, fast_run, monkeypatch
):
    from robustlab.store import ResultsStore

    opened: list[int] = []
    original = ResultsStore._connect

    def counting(self):
        opened.append(1)
        return original(self)

    per_epoch: list[int] = []
    monkeypatch.setattr(ResultsStore, "_connect", counting)
    from robustlab.training import runner

    original_fit = runner.fit

    def fit(*args, **kwargs):
        kwargs["on_epoch"] = lambda metrics: per_epoch.append(len(opened))
        return original_fit(*args, **kwargs)

    monkeypatch.setattr("robustlab.cli.train.fit", fit)
    out, store = tmp_path / "run", tmp_path / "s.db"
    argv = ["train", *sets([*fast_run, "train.track_every=2", "eval.final=false"])]
    assert main([*argv, "--out", str(out), "--store", str(store), "--quiet"]) == 0
    assert [b - a for a, b in itertools.pairwise(per_epoch)] == [1, 1]
    monkeypatch.setattr(ResultsStore, "_connect", original)
    reader = ResultsStore(store)
    run_id = reader.runs()[0].run_id
    assert [e["epoch"] for e in reader.epochs(run_id)] == [1, 2, 3]
    recorded = [r["iteration"] for r in reader.iterations(run_id)]
    assert recorded == [r["iteration"] for r in map(json.loads, _lines(out / "iterations.jsonl"))]
    assert recorded  # the epoch's iteration records went in with its row


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "command", [["eval", "--attack", "fgsm"], ["diagnose", "--what", "margins"]]
)
def test_threads_flag_reaches_torch_in_eval_and_diagnose(
    tmp_path, fast_run, restore_threads, command
):
    run, store = tmp_path / "run", str(tmp_path / "s.db")
    argv = ["train", *sets([*fast_run, "train.epochs=1", "eval.final=false"])]
    assert main([*argv, "--out", str(run), "--store", store, "--quiet"]) == 0
    for threads in (2, 1):
        argv = [command[0], str(run), *command[1:], "--n", "16", "--threads", str(threads)]
        assert main([*argv, "--store", store, "--quiet"]) == 0
        assert torch.get_num_threads() == threads
