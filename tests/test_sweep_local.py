"""Sweeps on the local executor: separate processes, threads divided, GPUs round-robin; a sweep
killed with SIGKILL mid-way and restarted completes every run exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from robustlab.sweep.executors import EXECUTORS, ExecutorSettings, create_executor
from robustlab.sweep.executors.local import LocalExecutor, threads_per_worker
from robustlab.sweep.spec import expand, parse_spec

EPOCHS = 3
# A 2 x 2 x 2 sweep (width x lambda x seed) of tiny TRADES runs on synthetic data.
SPEC = f"""
name = "acc"
seeds = [0, 1]

[base]
"data.name" = "synthetic"
"data.options.n_train" = 256
"data.options.n_test" = 128
"data.val_size" = 64
"model.name" = "mlp"
"method.name" = "trades"
"attack.eps" = 0.1
"attack.steps" = 2
"eval.steps" = 2
"eval.n_train" = 64
"eval.lipschitz_n" = 0
"train.epochs" = {EPOCHS}
"train.batch_size" = 64
"device" = "cpu"

[axes]
"model.width" = [8, 16]
"method.lam" = [1, 6]
"""


def cli(capsys, *args: str, cwd: Path) -> tuple[int, str, str]:
    """``robustlab ARGS`` in this process (no interpreter start-up): exit code, stdout, stderr."""
    from robustlab.cli.main import main

    capsys.readouterr()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return code, out, err


def info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_executor_registry_and_thread_division():
    assert "local" in EXECUTORS
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(8, cores=2) == 1  # never 0
    executor = create_executor("local", ExecutorSettings(workers=2, devices=[]))
    assert isinstance(executor, LocalExecutor) and executor.threads >= 1


def test_workers_get_divided_threads_and_round_robin_gpus(tmp_path, monkeypatch):
    """Each worker process is told its share of the cores (OMP_NUM_THREADS and --threads) and,
    with several GPUs, sees one of them: slot i gets GPU i mod count."""
    started = []

    class FakeProcess:
        def __init__(self, command, env, **kwargs):
            started.append((command, env))
            self.pid = 1000 + len(started)

        def poll(self):
            return 0

    monkeypatch.setattr("robustlab.sweep.executors.local.subprocess.Popen", FakeProcess)
    spec = parse_spec({"name": "g", "base": {"data.name": "synthetic"}, "seeds": [0, 1, 2]})
    runs = expand(spec, tmp_path)
    settings = ExecutorSettings(
        workers=2, log_dir=tmp_path / "logs", devices=["cuda:0", "cuda:1"], poll_s=0
    )
    executor = create_executor("local", settings)
    handles = executor.submit(runs, spec)
    executor.wait(handles)
    assert [h.state for h in handles] == ["done"] * 3
    gpus = [env["CUDA_VISIBLE_DEVICES"] for _, env in started]
    assert gpus[:2] == ["0", "1"]  # two workers, two GPUs: one each
    threads = threads_per_worker(2)
    for command, env in started:
        assert env["OMP_NUM_THREADS"] == str(threads)
        assert command[command.index("--threads") + 1] == str(threads)
        assert command[1:3] == ["-m", "robustlab.sweep.job"]


def _states(root: Path) -> dict[str, str]:
    out = {}
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (run_dir / "run.json").is_file():
            out[run_dir.name] = info(run_dir).get("status", "?")
    return out


def _epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


@contextlib.contextmanager
def _sweep_process(cwd: Path, *args: str, capture: bool = False) -> Iterator[subprocess.Popen]:
    """``python -m robustlab sweep spec.toml --out out --store db.sqlite ARGS`` in ``cwd``, one
    thread per process, in its own session: a process group of the sweep and its workers. On
    leaving, the group is killed (SIGKILL) if the sweep still runs, and any worker left after it.
    ``capture``: stdout and stderr as text pipes (else discarded)."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    sweep = subprocess.Popen(
        [sys.executable, "-m", "robustlab", "sweep", "spec.toml", "--out", "out",
         "--store", "db.sqlite", *args],
        cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=output,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        yield sweep
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)  # any worker left


def _wait_until(
    condition: Callable[[], bool], deadline: float, sweep: subprocess.Popen | None = None
) -> None:
    """Poll ``condition`` every 50 ms; fail once ``deadline`` (monotonic) passes first, or the
    sweep, when given, ends first."""
    while not condition():
        assert time.monotonic() < deadline and (sweep is None or sweep.poll() is None)
        time.sleep(0.05)


def test_sigkill_mid_sweep_then_restart_completes_every_run_exactly_once(tmp_path, capsys):
    """The acceptance test of issue 12 (local part): 2 x 2 x 2 tiny sweep, --workers 2, the
    sweep's process group killed with SIGKILL while runs train, restarted: every run finished
    once, no duplicate or missing rows, and the table equals direct store queries."""
    (tmp_path / "spec.toml").write_text(SPEC)
    root = tmp_path / "out" / "acc"
    with _sweep_process(tmp_path, "--workers", "2") as sweep:
        deadline = time.monotonic() + 300
        # Kill once a run is finished and another is between its first and last epoch.
        while time.monotonic() < deadline and sweep.poll() is None:
            states = _states(root) if root.exists() else {}
            done = [n for n, s in states.items() if s == "finished"]
            mid = [
                n
                for n, s in states.items()
                if s == "running" and 0 < _epochs_done(root / n) < EPOCHS
            ]
            if done and mid:
                break
            time.sleep(0.05)
        assert sweep.poll() is None, "the sweep ended before it could be killed mid-way"
        os.killpg(sweep.pid, signal.SIGKILL)
    before = {name: info(root / name) for name in _states(root)}
    finished_before = {n for n, i in before.items() if i["status"] == "finished"}
    unfinished = {n for n, i in before.items() if i["status"] != "finished"}
    assert finished_before and unfinished  # killed mid-way

    def run(*args: str) -> dict:
        code, out, err = cli(capsys, *args, "--store", "db.sqlite", "--json", cwd=tmp_path)
        assert code == 0, err
        return json.loads(out)

    shown = {r["name"]: r["state"] for r in run("sweep", "status", "spec.toml")["runs"]}
    assert all(shown[n] == "interrupted" for n in unfinished), (shown, before)  # processes gone
    assert all(shown[n] == "done" for n in finished_before)

    outcome = run("sweep", "spec.toml", "--workers", "2")  # --out: as recorded in the store
    assert outcome["counts"]["done"] == 8 and not outcome["failed"]
    assert finished_before.isdisjoint(outcome["started"])  # complete runs are not trained again
    for name in finished_before:  # ...nor touched
        assert info(root / name) == before[name]
    for name in unfinished:  # interrupted runs resumed in their directory, not started afresh
        assert info(root / name)["created_at"] == before[name]["created_at"]
    for run_dir in (root / n for n in _states(root)):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))

    # The store: every run once, every epoch once, each final evaluation once.
    db = sqlite3.connect(tmp_path / "db.sqlite")
    runs = db.execute("SELECT run_id, status, sweep FROM runs").fetchall()
    assert sorted(r[0] for r in runs) == sorted(f"acc/{n}" for n in _states(root))
    assert {r[1] for r in runs} == {"finished"} and {r[2] for r in runs} == {"acc"}
    per_run = dict(db.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id").fetchall())
    assert per_run == {r[0]: EPOCHS for r in runs}
    evaluations = db.execute(
        "SELECT run_id, source, COUNT(*) FROM evaluations GROUP BY run_id, source"
    ).fetchall()
    assert {count for *_, count in evaluations} == {1}
    assert len(evaluations) == 2 * len(runs)  # last and best of every run
    # A second ingest changes nothing (the store can be rebuilt from the run directories).
    query = "SELECT run_id, epoch, metrics FROM epochs ORDER BY run_id, epoch"
    snapshot = db.execute(query).fetchall()
    assert len(run("ingest", "out")["runs"]) == 8
    assert db.execute(query).fetchall() == snapshot
    assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == len(evaluations)

    # The table equals direct store queries.
    table = run(
        "sweep", "table", "spec.toml", "--rows", "method.lam", "--cols", "model.width",
        "--metric", "test_rob_acc",
    )  # fmt: skip
    rows = db.execute(
        """SELECT json_extract(sweep_values, '$."method.lam"'),
                  json_extract(sweep_values, '$."model.width"'),
                  json_extract(summary, '$.final.test_rob_acc')
           FROM runs WHERE sweep = 'acc' AND status = 'finished'"""
    ).fetchall()
    direct: dict[tuple, list[float]] = {}
    for lam, width, acc in rows:
        direct.setdefault((lam, width), []).append(acc)
    assert len(table["cells"]) == len(direct) == 4
    for cell in table["cells"]:
        values = direct[(cell["method.lam"], cell["model.width"])]
        assert cell["n"] == len(values) == 2
        assert cell["mean"] == pytest.approx(statistics.fmean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
    for width in table["cols"]["values"]:
        column = [c for c in table["cells"] if c["model.width"] == width]
        best = max(c["mean"] for c in column)
        assert [c["best"] for c in column] == [c["mean"] == best for c in column]
    # `robustlab runs --sweep --where` agrees with the store too.
    listed = run("runs", "--sweep", "acc", "--where", "model.width=16")["runs"]
    where = """SELECT run_id FROM runs WHERE json_extract(sweep_values, '$."model.width"') = 16"""
    assert sorted(r["run_id"] for r in listed) == sorted(r[0] for r in db.execute(where))
    db.close()


def test_a_tiny_preset_runs_end_to_end(tmp_path, capsys):
    """``--preset wu2021-war --scale tiny``: a calibration run and two WAR runs on digits."""
    preset = ("--preset", "wu2021-war", "--scale", "tiny", "--store", "db.sqlite", "--json")
    started = time.monotonic()
    code, out, err = cli(capsys, "sweep", *preset, "--workers", "2", "--out", "o", cwd=tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["counts"]["done"] == 3 and result["sweep"] == "wu2021-war-tiny"
    assert "start wu2021-war-tiny/war-w16-s0" in err  # progress names the runs
    code, out, _ = cli(capsys, "sweep", "status", *preset, cwd=tmp_path)
    assert {r["state"] for r in json.loads(out)["runs"]} == {"done"}
    code, out, _ = cli(
        capsys, "runs", "--store", "db.sqlite", "--sweep", "wu2021-war-tiny",
        "--where", "method.lam_schedule=war", "--json", cwd=tmp_path,
    )  # fmt: skip
    listed = json.loads(out)["runs"]
    assert len(listed) == 2
    assert all(0 <= r["final_metrics"]["last_robust_accuracy"] <= 1 for r in listed)
    # a second sweep finds everything done and starts nothing
    code, out, _ = cli(capsys, "sweep", *preset, cwd=tmp_path)
    assert code == 0 and json.loads(out)["started"] == []
    print(f"tiny preset sweep: {time.monotonic() - started:.1f} s")


def test_a_failed_run_is_reported_and_retried(tmp_path, capsys):
    """A run whose job raises (here: CIFAR-10 files missing) is marked failed, with one line in
    its run.json and the sweep's report (exit status 1); the next sweep leaves it alone,
    ``--retry-failed`` runs it again."""
    (tmp_path / "spec.toml").write_text(
        'name = "f"\n[base]\n"train.epochs" = 1\n"eval.lipschitz_n" = 0\n"eval.n_train" = 32\n'
        '"data.root" = "nodata"\n[axes]\n"data.name" = ["synthetic", "cifar10"]\n'
    )

    def sweep(*args: str) -> tuple[int, dict, str]:
        code, out, err = cli(
            capsys, "sweep", "spec.toml", "--store", "db.sqlite", "--out", "o", "--json", *args,
            cwd=tmp_path,
        )  # fmt: skip
        return code, json.loads(out), err

    code, first, err = sweep()
    assert code == 1 and first["failed"] == ["cifar10-s0"]
    assert "failed f/cifar10-s0: DataNotFoundError" in err and "--retry-failed" in err
    failed = info(tmp_path / "o" / "f" / "cifar10-s0")
    assert failed["status"] == "failed" and failed["error"].count("\n") == 0
    code, out, _ = cli(
        capsys, "sweep", "status", "spec.toml", "--store", "db.sqlite", "--json", cwd=tmp_path
    )
    states = {r["name"]: r["state"] for r in json.loads(out)["runs"]}
    assert states == {"synthetic-s0": "done", "cifar10-s0": "failed"}
    code, again, _ = sweep()
    assert code == 1 and again["started"] == []
    code, retried, _ = sweep("--retry-failed")
    assert retried["started"] == ["cifar10-s0"]
    db = sqlite3.connect(tmp_path / "db.sqlite")
    recorded = dict(db.execute("SELECT sweep_run, status FROM runs").fetchall())
    assert recorded == {"synthetic-s0": "finished", "cifar10-s0": "failed"}
    db.close()


def test_an_exited_unreaped_process_is_not_alive():
    """A run's process killed with its parent stays a zombie until init reaps it (in some
    containers, never): ``kill(pid, 0)`` still succeeds, yet the run was interrupted."""
    import socket

    from robustlab.rundir import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        assert process_alive(child.pid, socket.gethostname()) is False
    finally:
        child.wait()
    assert process_alive(os.getpid(), socket.gethostname()) is True


def test_workers_of_a_killed_sweep_mark_their_runs_interrupted(tmp_path):
    """SIGKILL of the sweep process alone (not its group): its workers get SIGTERM from the
    kernel (parent-death signal), record their runs as interrupted and exit, instead of
    training on as orphans the next sweep would have to wait for."""
    (tmp_path / "spec.toml").write_text(
        'name = "orphan"\n[base]\n"data.name" = "synthetic"\n"model.name" = "mlp"\n'
        '"model.width" = 8\n"train.epochs" = 200\n"eval.lipschitz_n" = 0\n"eval.n_train" = 32\n'
        '"attack.steps" = 1\n"eval.steps" = 1\n"device" = "cpu"\n'
    )
    run_dir = tmp_path / "out" / "orphan" / "s0"
    with _sweep_process(tmp_path) as sweep:
        deadline = time.monotonic() + 300
        _wait_until(lambda: _epochs_done(run_dir) >= 1, deadline, sweep)
        worker = info(run_dir)["pid"]
        sweep.kill()  # SIGKILL, the sweep process only
        sweep.wait()
        _wait_until(lambda: info(run_dir)["status"] != "running", deadline)
        recorded = info(run_dir)
        assert recorded["status"] == "interrupted" and recorded["signal"] == "SIGTERM"
        assert recorded["pid"] == worker


@pytest.mark.slow  # ~30-70 s on 2 shared cores; the SIGKILL test above resumes killed workers too
def test_a_worker_killed_mid_run_is_resumed_by_the_next_sweep(tmp_path, capsys):
    """SIGKILL of one worker while the sweep goes on: its run is reported interrupted (exit
    status 1: not every run is done), and the next sweep resumes it from its last checkpoint."""
    (tmp_path / "spec.toml").write_text(
        'name = "k"\n[base]\n"data.name" = "synthetic"\n"model.name" = "mlp"\n"train.epochs" = 20\n'
        '"eval.lipschitz_n" = 0\n"eval.n_train" = 32\n"eval.n" = 64\n"attack.steps" = 1\n"eval.steps" = 1\n'
        '"device" = "cpu"\n[axes]\n"model.width" = [4, 8]\n'
    )
    victim = tmp_path / "out" / "k" / "w4-s0"
    with _sweep_process(tmp_path, "--workers", "2", "--json", capture=True) as sweep:
        _wait_until(lambda: _epochs_done(victim) >= 2, time.monotonic() + 300, sweep)
        os.kill(info(victim)["pid"], signal.SIGKILL)
        out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err
    assert json.loads(out)["counts"] == {
        "done": 1, "running": 0, "interrupted": 1, "failed": 0, "pending": 0
    }  # fmt: skip
    assert "1 runs not finished; continue them with: robustlab sweep" in err
    created, done_before = info(victim)["created_at"], _epochs_done(victim)
    assert 2 <= done_before < 20
    code, out, err = cli(
        capsys, "sweep", "spec.toml", "--store", "db.sqlite", "--json", cwd=tmp_path
    )
    assert code == 0, err
    assert json.loads(out)["started"] == ["w4-s0"]
    assert info(victim)["status"] == "finished" and info(victim)["created_at"] == created
    assert [
        json.loads(x)["epoch"] for x in (victim / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, 21))
