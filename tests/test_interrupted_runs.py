"""Issue 8 point 13: a stopped run is marked ``interrupted`` and says how to resume; a run whose
process is gone is shown as interrupted, not ``running`` forever."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import sets
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.rundir import RunDirectory, shown_status
from robustlab.store import ResultsStore

# Epochs of a few milliseconds, and far too many of them to finish: the signal lands mid-run.
ENDLESS = [
    "data.name=synthetic",
    "data.options.n_train=128",
    "data.options.n_test=32",
    "data.val_size=32",
    "model.width=8",
    "train.epochs=100000",
    "train.batch_size=64",
    "attack.steps=1",
    "eval.steps=1",
    "eval.n_train=0",
    "eval.lipschitz_n=0",
    "device=cpu",
]


def _default_sigint() -> None:
    # A test runner started in the background may ignore SIGINT, and a child inherits that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_marks_the_run_interrupted(tmp_path: Path, signum: signal.Signals) -> None:
    run_dir, store = tmp_path / "run", tmp_path / "store.db"
    outputs = ["--out", str(run_dir), "--store", str(store), "--quiet"]
    process = subprocess.Popen(
        [sys.executable, "-m", "robustlab", "train", *sets(ENDLESS), *outputs],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch finished in 120 s"
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"interrupted by {signum.name}" in err
    assert f"robustlab train --resume {run_dir.resolve()}" in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == signum.name
    assert info["epochs_done"] >= 2 and info["pid"] == process.pid
    (record,) = ResultsStore(store, create=False).runs()
    assert record.status == "interrupted" and record.pid == process.pid
    # What a resume continues from is there: every logged epoch is in the last checkpoint.
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_run_whose_process_is_gone_shows_as_interrupted(tmp_path, capsys) -> None:
    store = ResultsStore(tmp_path / "store.db")
    config = build_config(None, ["data.name=synthetic"]).to_dict()
    here = socket.gethostname()
    cases = {  # run id: (pid, host, status `runs` must show)
        "dead": (_dead_pid(), here, "interrupted"),
        "alive": (os.getpid(), here, "running"),
        "elsewhere": (_dead_pid(), "another-host", "running"),  # cannot tell from here
        "unrecorded": (None, None, "running"),  # a run from before pids were recorded
    }
    for run_id, (pid, host, _) in cases.items():
        store.upsert_run(run_id, tmp_path / run_id, config, pid=pid, host=host)
    assert main(["runs", "--store", str(store.path), "--json"]) == 0
    rows = {row["run_id"]: row["status"] for row in json.loads(capsys.readouterr().out)["runs"]}
    assert rows == {run_id: shown for run_id, (_, _, shown) in cases.items()}
    assert main(["runs", "--store", str(store.path)]) == 0
    assert "robustlab train --resume RUN_DIR" in capsys.readouterr().out
    assert main(["show", "dead", "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out.splitlines()[0] and "--resume" in out


def test_a_run_directory_left_running_shows_as_interrupted(tmp_path, capsys) -> None:
    config = build_config(None, ["data.name=synthetic"])
    run = RunDirectory.create(tmp_path / "run", config, "r1")
    run.update_info(pid=_dead_pid(), host=socket.gethostname())  # status is still "running"
    assert main(["show", str(run.path), "--store", str(tmp_path / "none.db")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("interrupted")
    assert shown_status("finished", _dead_pid(), socket.gethostname()) == "finished"
