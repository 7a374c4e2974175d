"""Live loggers (train.loggers): TensorBoard event files hold every per-epoch metric and tracked
iteration exactly once, a resume included; wandb offline writes under the run directory;
unknown names and missing packages are refused with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.rundir import RunDirectory
from robustlab.store import ResultsStore
from robustlab.training.loggers import LOGGERS, list_loggers
from robustlab.training.runner import fit, prepare


class Crash(Exception):
    pass


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files in ``directory``: (step, value) pairs, as
    TensorBoard reads them (later files purging what a ``purge_step`` replaces)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensorboard_holds_every_epoch_and_iteration_once_across_a_resume(
    tmp_path: Path, fast_run: list[str], one_thread
) -> None:
    pytest.importorskip("tensorboard")
    overrides = [*fast_run, "train.loggers=[tensorboard]", "train.track_every=5"]
    config = build_config(None, [*overrides, "eval.final=false"])

    def crash_after_second(metrics: dict) -> None:
        if metrics["epoch"] == 2:  # checkpointed and stored, not yet sent to the loggers
            raise Crash

    run = RunDirectory.create(tmp_path / "run", config, "run")
    store = ResultsStore(tmp_path / "r.db")
    with pytest.raises(Crash):
        fit(prepare(config), run, "run", store=store, show_progress=False,
            on_epoch=crash_after_second)  # fmt: skip
    before = _scalars(run.path / "tensorboard")
    assert [step for step, _ in before["test_rob_acc"]] == [1]  # epoch 2 was never logged
    fit(prepare(config), run, "run", store=store, resume=True, show_progress=False)

    history = _jsonl(run.path / "metrics.jsonl")
    logged = _scalars(run.path / "tensorboard")
    # Every number of metrics.jsonl (lam_trace, a list of λ samples, is no scalar).
    expected_tags = {
        k for m in history for k, v in m.items() if k != "epoch" and isinstance(v, int | float)
    }
    assert {"test_rob_acc", "test_nat_acc", "val_rob_acc", "lr", "time_s"} <= expected_tags
    assert set(logged) == expected_tags
    for tag in expected_tags:
        assert [step for step, _ in logged[tag]] == [1, 2, 3], tag  # each epoch exactly once
        for (_, value), metrics in zip(logged[tag], history, strict=True):
            assert value == pytest.approx(float(metrics[tag]), rel=1e-6, abs=1e-7), tag

    records = _jsonl(run.path / "iterations.jsonl")
    tracked = _scalars(run.path / "tensorboard" / "iterations")
    assert [step for step, _ in tracked["iteration/grad_norm"]] == [r["iteration"] for r in records]
    assert [v for _, v in tracked["iteration/loss"]] == pytest.approx([r["loss"] for r in records])


def test_unknown_logger_and_missing_package_are_one_line_errors(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    assert {"tensorboard", "wandb"} <= set(list_loggers())
    with pytest.raises(UnknownNameError, match="valid: tensorboard, wandb"):
        build_config(None, ["train.loggers=[tensorboard, tensorbord]"])
    code = main(["train", "--set", "train.loggers=[nope]", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "train.loggers='nope': unknown name; valid: tensorboard, wandb" in err
    assert not (tmp_path / "x").exists()

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == LOGGERS.meta("wandb")["module"] else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'robustlab\[wandb\]'"):
        build_config(None, ["train.loggers=[tensorboard, wandb]"])


def test_wandb_offline_writes_under_the_run_directory(
    tmp_path: Path, fast_run: list[str], one_thread, monkeypatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # dir= wins over it
    config = build_config(
        None, [*fast_run, "train.epochs=1", "eval.final=false", "train.loggers=[wandb]"]
    )
    run = RunDirectory.create(tmp_path / "run", config, "sweep/run-1")
    fit(prepare(config), run, "sweep/run-1", show_progress=False)
    (offline,) = (run.path / "wandb").glob("offline-run-*-sweep-run-1")
    assert list(offline.glob("run-sweep-run-1.wandb"))
    assert not (tmp_path / "elsewhere").exists()
