"""Issue 14 points 1-3: nothing is lost when a run is killed anywhere (inside an epoch, while a
checkpoint or the store is written), when its last checkpoint is damaged, or when the disk fills.

The exact places are reached with the test-only fault injection (:mod:`robustlab._faults`,
``ROBUSTLAB_FAULT``); a property-style test also kills runs at random times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import train_cli, without_time
from robustlab import _faults
from robustlab.cli.main import main
from robustlab.store import ResultsStore
from robustlab.training.checkpoint import (
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
)

# Four epochs of about a tenth of a second: kills land in every part of a run.
RUN = [
    "data.name=synthetic", "data.options.n_train=512", "data.options.n_test=128",
    "data.val_size=64", "model.name=mlp", "model.width=32", "attack.eps=0.1", "attack.steps=3",
    "eval.steps=3", "eval.n_train=64", "train.epochs=4", "train.batch_size=64", "train.lr=0.05",
    "device=cpu",
]  # fmt: skip
SETS = [part for item in RUN for part in ("--set", item)]
FAST_SETS = ["eval.final=false"]  # with conftest's fast_run, for the in-process runs


def _cli(tmp: Path, *args: str, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != _faults.ENV}
    if fault:
        env[_faults.ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "robustlab", "train", *args, "--quiet", "--json"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _start(tmp: Path, name: str, fault: str | None = None) -> subprocess.Popen:
    return _cli(tmp, *SETS, "--out", name, "--store", f"{name}.db", fault=fault)


def _resume(tmp: Path, name: str, fault: str | None = None) -> subprocess.Popen:
    return _cli(tmp, "--resume", name, "--store", f"{name}.db", fault=fault)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[dict], dict, float]:
    """An uninterrupted run: its per-epoch metrics, its --json summary, its wall time."""
    tmp = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    process = _start(tmp, "ref")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return without_time(_metrics(tmp / "ref")), json.loads(out), time.monotonic() - started


def _assert_like_reference(tmp: Path, name: str, result: str, reference) -> None:
    """The resumed run's epochs (file and store: each once) and final numbers are the reference's."""
    history, summary, _ = reference
    assert without_time(_metrics(tmp / name)) == history
    final = json.loads(result)
    assert without_time([final["final"]]) == without_time([summary["final"]])
    assert (
        final["selection"]["last"]["robust_accuracy"]
        == (summary["selection"]["last"]["robust_accuracy"])
    )
    store = ResultsStore(tmp / f"{name}.db", create=False)
    (record,) = store.runs()
    assert record.status == "finished"
    assert without_time(store.epochs(record.run_id)) == history  # no epoch twice or missing
    assert len(store.evaluations(record.run_id)) == len(summary["selection"])
    assert not list((tmp / name / "checkpoints").glob(".*.tmp"))


def test_killed_while_writing_a_checkpoint_the_store_and_inside_an_epoch(
    tmp_path: Path, reference
) -> None:
    """One run killed three times, each time somewhere else, then resumed to the end."""
    kills = [
        ("checkpoint-write:3", _start),  # half-way through a checkpoint file of epoch 2
        ("store-write:6", _resume),  # the first epoch's store transaction after that resume
        ("train-step:3", _resume),  # inside the next epoch
    ]
    for fault, launch in kills:
        victim = launch(tmp_path, "victim", fault)
        _, err = victim.communicate(timeout=300)
        assert victim.returncode == -signal.SIGKILL, f"{fault} did not fire: {err}"
    resumed = _resume(tmp_path, "victim")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _assert_like_reference(tmp_path, "victim", out, reference)


def _kill_at_random(tmp: Path, trial: int, reference) -> None:
    rng = random.Random(1000 + trial)
    # From just after the imports to the end of the uninterrupted run: any place in the run.
    delay = rng.uniform(0.2, 1.0) * reference[2]
    victim = _start(tmp, "victim")
    try:
        victim.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=300)
    # Killed before the run directory was whole (no run.json): the same command starts it again.
    again = _resume if (tmp / "victim" / "run.json").exists() else _start
    resumed = again(tmp, "victim")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, f"killed after {delay:.2f} s: {err}"
    _assert_like_reference(tmp, "victim", out, reference)


def test_a_run_killed_at_a_random_time_resumes_to_the_same_result(tmp_path, reference) -> None:
    _kill_at_random(tmp_path, 0, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(1, 11))
def test_runs_killed_at_random_times_resume_to_the_same_result(tmp_path, reference, trial) -> None:
    _kill_at_random(tmp_path, trial, reference)


def test_a_run_killed_while_its_directory_was_created_is_started_again(
    tmp_path, fast_run, one_thread
) -> None:
    half_made = tmp_path / "run"
    (half_made / "checkpoints").mkdir(parents=True)
    (half_made / "config.toml").write_text("seed = 0\n")  # killed before run.json
    assert train_cli(tmp_path, [*fast_run, *FAST_SETS]) == 0
    assert len(_metrics(half_made)) == 3
    assert train_cli(tmp_path, [*fast_run, *FAST_SETS]) == 2  # a whole run is never overwritten


# ------------------------------------------------------------------- point 2: damaged last.pt


def _resume_in_process(tmp_path: Path) -> int:
    return main(["train", "--resume", str(tmp_path / "run"), "--quiet"])


def test_the_last_checkpoint_keeps_its_predecessor_until_the_new_one_verifies(
    tmp_path, monkeypatch
) -> None:
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"epoch": 1}, keep_previous=True)
    save_checkpoint(last, {"epoch": 2}, keep_previous=True)
    assert load_checkpoint(last)["epoch"] == 2
    assert load_checkpoint(previous_checkpoint(last))["epoch"] == 1
    # A copy that does not read back as written (a failing disk): nothing is replaced.
    from robustlab.training import checkpoint

    def corrupted(data: bytes, path: Path) -> bytes:
        raise checkpoint.CheckpointError(f"checkpoint {str(path)!r} fails its checksum")

    monkeypatch.setattr(checkpoint, "_verified_payload", corrupted)
    with pytest.raises(checkpoint.CheckpointError):
        save_checkpoint(last, {"epoch": 3}, keep_previous=True)
    monkeypatch.undo()
    assert load_checkpoint(last)["epoch"] == 2
    assert load_checkpoint(previous_checkpoint(last))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    tmp_path, fast_run, one_thread, capsys, damage
) -> None:
    assert train_cli(tmp_path, [*fast_run, *FAST_SETS]) == 0
    expected = without_time(_metrics(tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        last.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    else:  # killed between the two renames of a save
        last.unlink()
    capsys.readouterr()
    assert _resume_in_process(tmp_path) == 0
    err = capsys.readouterr().err
    (notice,) = [line for line in err.splitlines() if line.startswith("robustlab: ")]
    assert notice.endswith("; resuming from last.prev.pt (epoch 2)")
    evidence = list(last.parent.glob("last.pt.corrupt-*"))
    if damage == "missing":
        assert "does not exist" in notice and not evidence
    else:
        assert "fails its checksum" in notice and f"kept as {evidence[0].name}" in notice
        assert evidence[0].read_bytes() != data and len(evidence) == 1  # the evidence, kept
    # Epoch 3 was trained again from epoch 2's state: the same numbers, each epoch once.
    assert without_time(_metrics(tmp_path / "run")) == expected
    store = ResultsStore(tmp_path / "s.db", create=False)
    (record,) = store.runs()
    assert without_time(store.epochs(record.run_id)) == expected
    assert load_checkpoint(last)["epoch"] == 3


def test_no_verified_checkpoint_refuses_to_resume_and_touches_nothing(
    tmp_path, fast_run, one_thread, capsys
) -> None:
    assert train_cli(tmp_path, [*fast_run, *FAST_SETS]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last.pt", "last.prev.pt"):
        (checkpoints / name).write_bytes((checkpoints / name).read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    capsys.readouterr()
    assert _resume_in_process(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint to resume from" in err
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before


# ------------------------------------------------------------------- point 3: a full disk


@pytest.fixture(scope="module")
def fast_reference(tmp_path_factory) -> list[dict]:
    """The uninterrupted run of ``fast_run`` (conftest), in this process, on one thread."""
    from conftest import FAST_RUN

    tmp = tmp_path_factory.mktemp("fast")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_cli(tmp, [*FAST_RUN, *FAST_SETS]) == 0
    finally:
        torch.set_num_threads(threads)
    return without_time(_metrics(tmp / "run"))


@pytest.mark.parametrize(
    "where,named",
    [
        ("checkpoint-write:3", "run/checkpoints/"),  # a checkpoint of epoch 2
        ("metrics-write:2", "run/metrics.jsonl'"),
        ("store-write:7", "s.db'"),  # a store transaction of epoch 1 or 2
    ],
)
def test_a_full_disk_stops_the_run_with_one_line_and_resume_continues(
    tmp_path, fast_run, one_thread, fault, capsys, fast_reference, where, named
) -> None:
    fault(f"{where}:enospc")
    assert train_cli(tmp_path, [*fast_run, *FAST_SETS]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("robustlab train: error: no space left on the device writing ")
    assert f"writing '{tmp_path}/{named}" in err
    assert f"resume with: robustlab train --resume {tmp_path / 'run'}" in err
    # Consistent: each of the store, metrics.jsonl and the last checkpoint holds whole epochs
    # 1..k, written in the order checkpoint, metrics line, store row: so they differ by at
    # most the one epoch whose write failed, and a resume rewrites the others from the
    # checkpoint (the truth).
    run = tmp_path / "run"
    logged = [m["epoch"] for m in _metrics(run)]
    store = ResultsStore(tmp_path / "s.db", create=False)
    (record,) = store.runs()
    assert record.status == "interrupted"
    stored = [m["epoch"] for m in store.epochs(record.run_id)]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert logged == list(range(1, len(logged) + 1)) and stored == logged[: len(stored)]
    assert len(stored) <= len(logged) <= saved <= len(stored) + 1 and saved < 3
    assert not list((run / "checkpoints").glob(".*.tmp"))
    # Space is back.
    fault(None)
    assert _resume_in_process(tmp_path) == 0
    assert without_time(_metrics(run)) == fast_reference
    assert without_time(store.epochs(record.run_id)) == fast_reference
    assert store.run(record.run_id).status == "finished"


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path) -> None:
    # mkstemp makes its temp file 0600: results must stay readable by whoever the umask allows.
    from robustlab._io import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.toml", "x = 1\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o644
