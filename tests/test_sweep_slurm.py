"""The ``slurm`` executor (submitit), tested against a real single-node Slurm cluster.

``scripts/slurm-local.sh start`` runs one (``.ci/run`` installs ``slurm-wlm`` and ``munge`` and
starts it before ``make test``; the ``slurm_cluster`` fixture starts it itself when it can). Where
no cluster can start, the tests marked ``slurm`` skip with the reason, and the same acceptance
runs through submitit's local executor instead (``test_submitit_local_fallback``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustlab.cli.main import main
from robustlab.errors import ConfigError
from robustlab.sweep.executors import EXECUTORS, ExecutorSettings, RunHandle, create_executor
from robustlab.sweep.executors.slurm import (
    SlurmExecutor,
    SlurmRun,
    check_options,
    slurm_minutes,
)
from robustlab.sweep.spec import expand, parse_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
CLUSTER_DIR = Path(os.environ.get("ROBUSTLAB_SLURM_DIR", "/tmp/robustlab-slurm"))

EPOCHS = 5
# The acceptance grid: 2 widths x 2 lambdas x 2 seeds of tiny TRADES runs on the digits, with
# the whole test and validation sets evaluated every epoch, so an epoch lasts long enough
# (a few tenths of a second) for a job to be caught between two epochs.
SPEC = f"""
name = "slurm-acc"
seeds = [0, 1]

[base]
"data.name" = "digits"
"model.name" = "mlp"
"method.name" = "trades"
"attack.steps" = 2
"eval.steps" = 2
"eval.n_train" = 0
"eval.lipschitz_n" = 0
"train.epochs" = {EPOCHS}
"train.batch_size" = 128
"device" = "cpu"

[axes]
"model.width" = [16, 32]
"method.lam" = [1, 6]

[slurm]
cpus_per_run = 1
time_min = 30
"""
TABLE_ARGS = ["--rows", "method.lam", "--cols", "model.width", "--format", "json"]


# -- without a cluster ---------------------------------------------------------------------------


def test_slurm_options_are_checked():
    assert check_options({"partition": "gpu", "gpus_per_run": 1, "mem_gb": 7.5}) == {
        "partition": "gpu",
        "gpus_per_run": 1,
        "mem_gb": 7.5,
    }
    with pytest.raises(ConfigError, match=r"slurm\.partiton.*did you mean 'slurm\.partition'"):
        check_options({"partiton": "gpu"})
    with pytest.raises(ConfigError, match=r"slurm\.cpus_per_run='4': must be a int"):
        check_options({"cpus_per_run": "4"})
    with pytest.raises(ConfigError, match="torchrun"):
        check_options({"gpus_per_run": 2})
    with pytest.raises(ConfigError, match="slurm.setup"):
        check_options({"setup": ["module load cuda", 3]})


def test_slurm_durations():
    assert slurm_minutes("30") == 30
    assert slurm_minutes("2:00:00") == 120
    assert slurm_minutes("1-12") == 36 * 60
    assert slurm_minutes("1-00:00:30") == 1441  # seconds round up to a whole minute
    assert slurm_minutes("infinite") is None
    assert slurm_minutes("n/a") is None


def test_slurm_run_is_checkpointable_as_submitit_requires(tmp_path):
    """submitit's protocol: ``checkpoint()`` returns a DelayedSubmission of a callable that
    executes the same run again (it resumes from the run's last checkpoint)."""
    submitit = pytest.importorskip("submitit")

    spec = parse_spec({"name": "p", "base": {"data.name": "synthetic"}, "seeds": [3]})
    (run,) = expand(spec, tmp_path)
    job = SlurmRun(run, threads=2)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, SlurmRun)
    assert delayed.function.run == run and delayed.function.threads == 2
    assert delayed.args == () and delayed.kwargs == {}


def test_slurm_executor_needs_a_submit_host(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch/squeue not found"):
        create_executor("slurm", ExecutorSettings(log_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"slurm\.parttion"):
        create_executor("slurm", ExecutorSettings(log_dir=tmp_path, options={"parttion": "x"}))
    assert {"slurm", "submitit-local"} <= set(EXECUTORS.names())


def test_job_states_map_to_handle_states(tmp_path, monkeypatch):
    """squeue's states drive the handles; a job gone from squeue is judged by its run
    directory (``run.json`` is the truth, not the scheduler's view)."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    executor = create_executor("slurm", ExecutorSettings(log_dir=tmp_path))
    spec = parse_spec({"name": "m", "base": {"data.name": "synthetic"}, "seeds": [0]})
    (run,) = expand(spec, tmp_path)
    handle = RunHandle(run, job_id="7_0")
    for state, expected in [
        ("PENDING", "pending"),
        ("RUNNING", "running"),
        ("REQUEUED", "pending"),  # preempted and requeued: not over
        ("COMPLETED", "done"),
        ("OUT_OF_MEMORY", "failed"),
        (None, "failed"),  # gone from squeue, run not finished
    ]:
        executor._update(handle, state)
        assert handle.state == expected, state
    run.path.mkdir(parents=True)
    (run.path / "run.json").write_text(json.dumps({"status": "finished"}))
    executor._update(handle, None)
    assert handle.state == "done"


# -- the cluster ---------------------------------------------------------------------------------


def _cluster_up() -> bool:
    if not SCRIPT.exists() or shutil.which("sinfo") is None:
        return False
    return subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str | None]:
    """``None`` when a single-node Slurm is up (started here if needed and possible, and
    stopped at the end if started here); otherwise why not."""
    started = False
    reason = None
    if os.environ.get("ROBUSTLAB_TEST_NO_SLURM"):  # to run the fallback where Slurm is up
        reason = "ROBUSTLAB_TEST_NO_SLURM is set"
    elif not _cluster_up():
        if os.geteuid() != 0:
            reason = "not root (scripts/slurm-local.sh runs the daemons as root)"
        elif shutil.which("slurmctld") is None or shutil.which("munged") is None:
            reason = "slurm-wlm and munge are not installed (apt-get install -y slurm-wlm munge)"
        else:
            result = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True)
            started = result.returncode == 0
            if not started:
                reason = f"scripts/slurm-local.sh start failed: {result.stderr.strip()[-300:]}"
    if reason is None and (CLUSTER_DIR / "slurm.conf").exists():
        os.environ["SLURM_CONF"] = str(CLUSTER_DIR / "slurm.conf")
    yield reason
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True)


def robustlab(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``robustlab ARGS`` in this process (no interpreter to start): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _info(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["epoch"] for line in lines]


def _table(capsys: pytest.CaptureFixture, spec: Path, store: Path, metric: str) -> dict:
    code, out, err = robustlab(
        capsys, "sweep", "table", str(spec), "--store", str(store), "--metric", metric, *TABLE_ARGS
    )
    assert code == 0, err
    return json.loads(out)


def _final_metrics(root: Path) -> dict[str, dict]:
    """Every run's final per-epoch metrics and selection, without the wall times."""
    out = {}
    for run_dir in sorted(p for p in root.iterdir() if (p / "run.json").is_file()):
        final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        final.pop("time_s")
        selection = {
            which: {k: v for k, v in s.items() if k != "seconds"}
            for which, s in _info(run_dir)["selection"].items()
        }
        out[run_dir.name] = {"final": final, "selection": selection}
    return out


def _interfere(root: Path, sweep: subprocess.Popen, actions: list[str]) -> dict[str, str]:
    """While ``sweep`` runs, take one run between two epochs per action: ``kill`` (SIGKILL of its
    Python process) or ``usr2`` (the signal Slurm sends before a time limit or preemption:
    submitit checkpoints and requeues the job). Returns ``{run name: action}``."""
    taken: dict[str, str] = {}
    deadline = time.monotonic() + 400
    while len(taken) < len(actions) and sweep.poll() is None and time.monotonic() < deadline:
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            info = _info(run_dir)
            if run_dir.name in taken or info.get("status") != "running" or not info.get("pid"):
                continue
            if 1 <= len(_epochs(run_dir)) < EPOCHS:
                action = actions[len(taken)]
                signum = signal.SIGKILL if action == "kill" else signal.SIGUSR2
                try:
                    os.kill(info["pid"], signum)
                except ProcessLookupError:
                    continue
                taken[run_dir.name] = action
                if len(taken) == len(actions):
                    break
        time.sleep(0.02)
    return taken


def _release_requeued(job_id: str, sweep: subprocess.Popen) -> None:
    """Slurm holds a requeued job for 2 minutes (its BeginTime); let it start now."""
    deadline = time.monotonic() + 120
    while sweep.poll() is None and time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "--noheader", "--array", "-j", job_id, "--format=%T"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)


def _local_reference(capsys: pytest.CaptureFixture, tmp_path: Path, spec: Path) -> Path:
    """The sweep on the local executor (one thread per run, as the Slurm jobs get)."""
    code, _, err = robustlab(
        capsys, "sweep", str(spec), "--workers", "2", "--threads", "1",
        "--out", str(tmp_path / "local"), "--store", str(tmp_path / "local.db"),
    )  # fmt: skip
    assert code == 0, err
    return tmp_path / "local.db"


def _assert_same_results(
    capsys: pytest.CaptureFixture, tmp_path: Path, spec: Path, other: str
) -> None:
    local_db = _local_reference(capsys, tmp_path, spec)
    for metric in ("test_rob_acc", "test_nat_acc"):
        assert _table(capsys, spec, tmp_path / f"{other}.db", metric) == _table(
            capsys, spec, local_db, metric
        )
    assert _final_metrics(tmp_path / other / "slurm-acc") == _final_metrics(
        tmp_path / "local" / "slurm-acc"
    )


@pytest.mark.slurm
def test_slurm_sweep_killed_and_requeued_gives_the_local_table(
    slurm_cluster, tmp_path, capsys, monkeypatch
):
    """The acceptance test: the 2 x 2 x 2 sweep submitted to a single-node Slurm through
    submitit, one job SIGKILLed mid-run and another signalled as preempted (SIGUSR2: checkpoint
    and requeue), then ``robustlab sweep`` again: every run completes exactly once and the
    table is the local executor's."""
    if slurm_cluster is not None:
        pytest.skip(
            f"no Slurm cluster could start here: {slurm_cluster}; "
            "test_submitit_local_fallback ran the same sweep through submitit's local executor"
        )
    monkeypatch.chdir(tmp_path)  # every command here runs from the sweep's directory
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out, store = tmp_path / "slurm", tmp_path / "slurm.db"
    command = [sys.executable, "-m", "robustlab", "sweep", str(spec), "--executor", "slurm"]
    command += ["--workers", "2", "--out", str(out), "--store", str(store)]
    with (tmp_path / "sweep1.log").open("w") as log:
        sweep = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            root = out / "slurm-acc"
            while not root.is_dir() and sweep.poll() is None:
                time.sleep(0.1)
            taken = _interfere(root, sweep, ["kill", "usr2"])
            jobs = json.loads((root / ".sweep/logs/slurm/jobs.json").read_text())
            requeued = next(name for name, action in taken.items() if action == "usr2")
            _release_requeued(jobs[requeued]["job_id"], sweep)
            # The SIGKILLed run is left interrupted, so this sweep is not complete: exit 1.
            assert sweep.wait(timeout=400) == 1, (tmp_path / "sweep1.log").read_text()
        finally:
            if sweep.poll() is None:
                sweep.kill()
    assert sorted(taken.values()) == ["kill", "usr2"], taken
    killed = next(name for name, action in taken.items() if action == "kill")
    # The SIGKILLed run is left with its epochs so far; the requeued one finished in its job.
    assert _info(root / killed)["status"] == "running"
    assert 1 <= len(_epochs(root / killed)) < EPOCHS
    assert _info(root / requeued)["status"] == "finished"
    assert _epochs(root / requeued) == list(range(1, EPOCHS + 1))
    log = Path(jobs[requeued]["log"]).with_suffix(".err").read_text()
    assert "SIGUSR2" in log and "requeued" in log

    code, _, err = robustlab(capsys, *command[3:])
    assert code == 0, err
    assert "1 interrupted" in err and "8 done" in err
    for run_dir in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        assert _info(run_dir)["status"] == "finished"
        assert _epochs(run_dir) == list(range(1, EPOCHS + 1)), run_dir.name  # each exactly once
    _assert_same_results(capsys, tmp_path, spec, "slurm")


def test_submitit_local_fallback(slurm_cluster, tmp_path, capsys, monkeypatch):
    """Where no Slurm can start: the same sweep through submitit's local executor (the Slurm
    executor's job callable, pickling and ingest), one job SIGKILLed, then swept again."""
    if slurm_cluster is None:
        pytest.skip("a Slurm cluster is up: the slurm-marked acceptance test covers this on it")
    monkeypatch.chdir(tmp_path)  # every command here runs from the sweep's directory
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out, store = tmp_path / "slurm", tmp_path / "slurm.db"
    command = [sys.executable, "-m", "robustlab", "sweep", str(spec)]
    command += ["--executor", "submitit-local", "--out", str(out), "--store", str(store)]
    with (tmp_path / "sweep1.log").open("w") as log:
        sweep = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            root = out / "slurm-acc"
            while not root.is_dir() and sweep.poll() is None:
                time.sleep(0.1)
            taken = _interfere(root, sweep, ["kill"])
            sweep.wait(timeout=400)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    assert list(taken.values()) == ["kill"]
    code, _, err = robustlab(capsys, *command[3:])
    assert code == 0, err
    _assert_same_results(capsys, tmp_path, spec, "slurm")


def test_slurm_executor_is_a_registered_executor():
    assert EXECUTORS.get("slurm") is SlurmExecutor
