"""Issue 14 point 5: NaN / inf losses and exploding gradients stop a run (or roll it back) with
one line, exit code 3, the last good checkpoint kept; gradient clipping by global norm."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import train_cli
from robustlab.config import build_config, to_toml
from robustlab.errors import ConfigError
from robustlab.store import ResultsStore
from robustlab.training.checkpoint import load_checkpoint
from robustlab.training.loop import train_step
from robustlab.training.runner import prepare

# A constant learning rate (piecewise, its only milestone at the end), so a lowered one shows.
CONSTANT_LR = ["train.schedule=piecewise", "train.milestones=[3]", "eval.final=false"]
STEPS_PER_EPOCH = 4  # 256 training points (minus the 64 of validation) in batches of 64 -> 3 + 1


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[-1]


@pytest.mark.parametrize("kind,name", [("nan", "NaN loss"), ("inf", "inf loss")])
def test_a_nan_or_inf_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, fast_run, one_thread, fault, capsys, kind, name
) -> None:
    # The second step of epoch 2 is poisoned; its gradients make the weights NaN too.
    fault(f"loss:{STEPS_PER_EPOCH + 2}:{kind}")
    code = train_cli(tmp_path, [*fast_run, *CONSTANT_LR])
    err = capsys.readouterr().err
    assert code == 3
    line = _one_line(err)
    assert line.startswith(f"robustlab train: error: {name} in epoch 2; run marked failed")
    assert "last good checkpoint: epoch 1" in line
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == f"{name} in epoch 2"
    (record,) = ResultsStore(tmp_path / "s.db", create=False).runs()
    assert record.status == "failed" and record.summary["error"] == f"{name} in epoch 2"
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_gradient_norm_above_the_limit_stops_the_run(
    tmp_path, fast_run, one_thread, capsys
) -> None:
    code = train_cli(tmp_path, [*fast_run, "train.grad_norm_limit=1e-6"])
    line = _one_line(capsys.readouterr().err)
    assert code == 3
    assert "gradient norm " in line and "> train.grad_norm_limit=1e-06 in epoch 1" in line
    assert "no epoch finished (no checkpoint)" in line
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_rollback_reloads_the_previous_epoch_and_lowers_the_learning_rate(
    tmp_path, fast_run, one_thread, fault, capsys
) -> None:
    fault(f"loss:{STEPS_PER_EPOCH + 2}:nan")  # once: the rolled-back epoch 2 then trains cleanly
    sets = [*fast_run, *CONSTANT_LR, "train.on_nan=rollback", "train.nan_lr_factor=0.25"]
    assert train_cli(tmp_path, sets) == 0
    err = capsys.readouterr().err
    (notice,) = [line for line in err.splitlines() if "rolled back" in line]
    assert notice == (
        "robustlab: NaN loss in epoch 2; rolled back to the end of epoch 1, learning rate x0.25 "
        "(now 0.0125), rollback 1/3"
    )
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert [m["lr"] for m in history] == [0.05, 0.0125, 0.0125]
    assert all(math.isfinite(m["train_loss"]) for m in history)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["numerics"] == {"lr_scale": 0.25, "rollbacks": 1}  # a resume keeps the rate
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["rollbacks"] == [{"epoch": 2, "fault": "NaN loss", "lr_scale": 0.25}]


def test_rollback_of_the_first_epoch_restarts_from_the_initial_weights(
    tmp_path, fast_run, one_thread, fault, capsys
) -> None:
    fault("loss:2:inf")
    assert train_cli(tmp_path, [*fast_run, *CONSTANT_LR, "train.on_nan=rollback"]) == 0
    assert "inf loss in epoch 1; rolled back to the start of the run" in capsys.readouterr().err
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in history] == [0.025] * 3


def test_rollback_gives_up_after_nan_max_rollbacks(
    tmp_path, fast_run, one_thread, fault, capsys
) -> None:
    fault(f"loss:{STEPS_PER_EPOCH + 2}+:nan")  # every loss from epoch 2 on
    sets = [*fast_run, *CONSTANT_LR, "train.on_nan=rollback", "train.nan_max_rollbacks=2"]
    assert train_cli(tmp_path, sets) == 3
    err = capsys.readouterr().err
    assert err.count("rolled back to the end of epoch 1") == 2
    line = _one_line(err)
    assert line.startswith(
        "robustlab train: error: NaN loss in epoch 2 after 2 rollbacks "
        "(train.nan_max_rollbacks=2); run marked failed; last good checkpoint: epoch 1"
    )
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def _step_delta(overrides: list[str], scale: float | None = None) -> float:
    """The norm of the parameter change of one SGD step (lr 1, no momentum or decay)."""
    config = build_config(
        None, [*overrides, "train.lr=1", "train.momentum=0", "train.weight_decay=0"]
    )
    exp = prepare(config)
    if scale is not None:  # fp16 on the CPU: a scale that does not overflow the MLP's gradients
        exp.controls.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    before = [p.detach().clone() for p in exp.model.parameters()]
    x = exp.data.train_x[:64].float().div(255)
    train_step(
        exp.model, exp.method, exp.optimizer, exp.controls, x, exp.data.train_y[:64], exp.device
    )
    return float(
        torch.sqrt(
            sum(
                ((p.detach() - b) ** 2).sum()
                for p, b in zip(exp.model.parameters(), before, strict=True)
            )
        )
    )


def test_max_grad_norm_clips_the_global_norm_after_fp16_unscaling(fast_run, one_thread) -> None:
    assert _step_delta(fast_run) > 0.01  # the unclipped step is larger than the bound below
    assert _step_delta([*fast_run, "train.max_grad_norm=0.001"]) == pytest.approx(1e-3, rel=1e-3)
    # Clipping the scaled gradient (before unscaling) would move the weights by 1e-3 / 16.
    fp16 = [*fast_run, "train.max_grad_norm=0.001", "train.precision=fp16"]
    assert _step_delta(fp16, scale=16.0) == pytest.approx(1e-3, rel=2e-2)


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.on_nan=skip", "train.on_nan"),
        ("train.nan_lr_factor=1.5", "train.nan_lr_factor"),
        ("train.nan_lr_factor=0", "train.nan_lr_factor"),
        ("train.nan_max_rollbacks=-1", "train.nan_max_rollbacks"),
        ("train.nan_max_rollbacks=1.5", "train.nan_max_rollbacks"),
        ("train.max_grad_norm=-1", "train.max_grad_norm"),
        ("train.grad_norm_limit=0", "train.grad_norm_limit"),
        ("train.grad_norm_limit=yes", "train.grad_norm_limit"),
    ],
)
def test_the_fault_keys_are_validated(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(None, [override])
    assert caught.value.key == key and "\n" not in str(caught.value)


def test_the_limit_must_exceed_the_clipping_bound() -> None:
    with pytest.raises(
        ConfigError, match=r"train.grad_norm_limit=1.0: must be > train.max_grad_norm"
    ):
        build_config(None, ["train.max_grad_norm=2", "train.grad_norm_limit=1"])


def test_the_fault_keys_are_written_to_config_toml() -> None:
    sets = ["train.max_grad_norm=1", "train.grad_norm_limit=100", "train.on_nan=rollback"]
    text = to_toml(
        build_config(None, [*sets, "train.nan_lr_factor=0.1", "train.nan_max_rollbacks=5"])
    )
    for line in ("max_grad_norm = 1.0", "grad_norm_limit = 100.0", 'on_nan = "rollback"',
                 "nan_lr_factor = 0.1", "nan_max_rollbacks = 5"):  # fmt: skip
        assert line in text.splitlines(), line


def test_the_guard_reads_nothing_back_from_the_device_until_the_epoch_ends(
    fast_run, one_thread, host_reads
) -> None:
    config = build_config(None, [*fast_run, "train.max_grad_norm=1", "train.grad_norm_limit=1e6"])
    exp = prepare(config)
    exp.method.craft = lambda model, x, y: x  # the attack's own reads are not the guard's
    x, y = exp.data.train_x[:64].float().div(255), exp.data.train_y[:64]
    train_step(exp.model, exp.method, exp.optimizer, exp.controls, x, y, exp.device)
    with host_reads() as calls:
        train_step(exp.model, exp.method, exp.optimizer, exp.controls, x, y, exp.device)
        assert calls == [], calls
        exp.controls.guard.check(epoch=1)  # the one read, at the epoch's end
        assert calls == ["tolist"]
