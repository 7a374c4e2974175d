"""A run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import without_time
from robustlab.store import ResultsStore

# Long enough per epoch (~0.3 s) that a kill after the second epoch lands inside the third.
RUN = [
    "data.name=synthetic", "data.options.n_train=2048", "data.options.n_test=256", "data.val_size=128",
    "model.name=mlp", "model.width=64", "attack.eps=0.1", "attack.steps=5", "eval.steps=5",
    "eval.n_train=128", "train.epochs=6", "train.batch_size=64", "train.lr=0.05", "device=cpu",
]  # fmt: skip


def _train(args: list[str], cwd: Path) -> subprocess.Popen:
    sets = [part for item in RUN for part in ("--set", item)]
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "robustlab", "train", *args, *sets, "--quiet", "--json"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = _train(["--out", "reference", "--store", "ref.db"], tmp_path)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    expected = json.loads(out)

    victim = _train(["--out", "victim", "--store", "victim.db"], tmp_path)
    metrics = tmp_path / "victim" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its second epoch"
        time.sleep(0.02)
    time.sleep(0.1)  # into the third epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    lines_at_kill = len(metrics.read_text().splitlines())
    assert lines_at_kill < 6, "the run finished before it could be killed; make epochs longer"

    resumed = subprocess.run(
        [sys.executable, "-m", "robustlab", "train", "--resume", "victim", "--store", "victim.db", "--quiet", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)

    reference_history = [
        json.loads(line)
        for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    ]
    victim_history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in victim_history] == [1, 2, 3, 4, 5, 6]
    assert without_time(victim_history) == without_time(reference_history)
    assert {k: v for k, v in result["final"].items() if k != "time_s"} == {
        k: v for k, v in expected["final"].items() if k != "time_s"
    }
    assert result["best"]["epoch"] == expected["best"]["epoch"]

    store = ResultsStore(tmp_path / "victim.db", create=False)
    (record,) = store.runs()
    assert record.status == "finished"
    stored = store.epochs(record.run_id)
    assert [m["epoch"] for m in stored] == [1, 2, 3, 4, 5, 6]  # no epoch twice
    assert without_time(stored) == without_time(reference_history)
    assert not list((tmp_path / "victim" / "checkpoints").glob("*.tmp"))
