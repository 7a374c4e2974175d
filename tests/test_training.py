"""Training methods, schedules, checkpoints and the generic loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import create_attack
from robustlab.config import build_config
from robustlab.errors import CheckpointError, ConfigError, UnknownNameError
from robustlab.models import create_model
from robustlab.rundir import RunDirectory
from robustlab.training import create_method, list_methods
from robustlab.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from robustlab.training.runner import fit, prepare
from robustlab.training.schedules import create_schedule, list_schedules


def _model() -> torch.nn.Module:
    return create_model("mlp", num_classes=4, in_channels=1, image_size=4, width=16)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))


@pytest.mark.parametrize("name", list_methods())
def test_every_method_returns_a_differentiable_loss_and_detached_parts(name: str) -> None:
    model, (x, y) = _model(), _batch()
    method = create_method(name, attack=create_attack("pgd", eps=0.1, steps=2))
    model.train()
    out = method(model, x, y)
    assert out["loss"].requires_grad and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(not v.requires_grad and v.dim() == 0 for k, v in out.items() if k != "loss")
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.training  # the attack restored train mode


def test_pgd_at_is_the_cross_entropy_of_the_attack_and_lambda_interpolates() -> None:
    model, (x, y) = _model(), _batch()
    attack = create_attack("pgd", eps=0.1, steps=2, random_start=False)
    x_adv = attack(model, x, y)
    madry = create_method("pgd_at", attack=attack)
    assert madry.lam == 1.0
    out = madry(model, x, y)
    assert torch.allclose(out["loss"], F.cross_entropy(model(x_adv), y))
    half = create_method("pgd_at", attack=attack, lam=0.5)(model, x, y)
    expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    assert torch.allclose(half["loss"], expected)


def test_clean_method_is_plain_cross_entropy_and_needs_no_attack() -> None:
    model, (x, y) = _model(), _batch()
    out = create_method("clean")(model, x, y)
    assert torch.allclose(out["loss"], F.cross_entropy(model(x), y))
    with pytest.raises(ConfigError, match="needs a training attack"):
        create_method("pgd_at")
    with pytest.raises(ConfigError, match="method.lam"):
        create_method("pgd_at", attack=create_attack("pgd"), lam=-1)
    with pytest.raises(UnknownNameError, match="valid: .*clean, .*pgd_at"):
        create_method("pgd")


def test_piecewise_and_cosine_schedules() -> None:
    assert {"piecewise", "cosine"} <= set(list_schedules())
    piecewise = create_schedule("piecewise", 100, [75, 90], 0.1)
    assert piecewise(0) == 1 and piecewise(74.99) == 1
    assert math.isclose(piecewise(75), 0.1) and math.isclose(piecewise(95), 0.01)
    cosine = create_schedule("cosine", 10, [], 0.1)
    assert (
        cosine(0) == 1
        and math.isclose(cosine(5), 0.5)
        and math.isclose(cosine(10), 0, abs_tol=1e-12)
    )
    warm = create_schedule("piecewise", 10, [5], 0.1, warmup_epochs=2)
    assert warm(0) == 0 and math.isclose(warm(1), 0.5) and warm(3) == 1


def test_checkpoint_roundtrip_and_corruption_is_detected(tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    state = {"epoch": 3, "weights": torch.arange(10.0)}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad header"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip() -> None:
    state = capture_rng_state()
    first = torch.rand(3)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_fit_records_every_epoch_and_keeps_best_and_last(tmp_path, fast_run) -> None:
    config = build_config(None, fast_run)
    experiment = prepare(config)
    run = RunDirectory.create(tmp_path / "run", config, "run-1")
    seen = []
    result = fit(experiment, run, "run-1", store=None, show_progress=False, on_epoch=seen.append)
    assert [m["epoch"] for m in result.history] == [1, 2, 3] == [m["epoch"] for m in seen]
    required = {"epoch", "lr", "train_loss", "train_nat_acc", "train_rob_acc", "val_nat_acc", "val_rob_acc",
                "test_nat_acc", "test_rob_acc", "test_stability", "time_s"}  # fmt: skip
    for m in result.history:
        assert required <= set(m)
        for key in (
            "train_nat_acc",
            "train_rob_acc",
            "val_nat_acc",
            "val_rob_acc",
            "test_nat_acc",
            "test_rob_acc",
            "test_stability",
        ):
            assert 0.0 <= m[key] <= 1.0
        assert m["test_rob_acc"] <= m["test_nat_acc"] and m["test_rob_acc"] <= m["test_stability"]
    assert run.read_metrics() == result.history
    assert result.best["val_rob_acc"] == max(m["val_rob_acc"] for m in result.history)
    best = load_checkpoint(run.best_checkpoint)
    last = load_checkpoint(run.last_checkpoint)
    assert best["epoch"] == result.best["epoch"] and last["epoch"] == 3
    assert run.read_info()["status"] == "finished"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5


def test_training_actually_learns_and_adversarial_training_buys_robustness(tmp_path) -> None:
    """On digits, PGD-AT ends far more robust than clean training at the same budget (the demo, shortened)."""
    overrides = ["model.width=64", "attack.eps=0.2", "eval.steps=10", "eval.n_train=0", "train.epochs=8",
                 "train.batch_size=64", "train.lr=0.05", "train.schedule=cosine", "device=cpu"]  # fmt: skip
    finals = {}
    for method in ("clean", "pgd_at"):
        config = build_config(None, [*overrides, f"method.name={method}"])
        run = RunDirectory.create(tmp_path / method, config, method)
        finals[method] = fit(prepare(config), run, method, show_progress=False).final
    assert finals["clean"]["test_nat_acc"] > 0.9  # 10 classes: chance is 0.1
    assert finals["pgd_at"]["test_rob_acc"] > finals["clean"]["test_rob_acc"] + 0.15
    assert finals["pgd_at"]["test_stability"] > finals["clean"]["test_stability"] + 0.15


def test_lr_follows_the_schedule_per_iteration(tmp_path, fast_run) -> None:
    config = build_config(
        None, [*fast_run, "train.schedule=piecewise", "train.milestones=[1]", "train.gamma=0.1"]
    )
    run = RunDirectory.create(tmp_path / "run", config, "lr")
    history = fit(prepare(config), run, "lr", show_progress=False).history
    assert math.isclose(history[0]["lr"], 0.05) and math.isclose(history[1]["lr"], 0.005)


def test_bn_mode_train_updates_running_stats_during_the_attack() -> None:
    model = create_model("lenet", num_classes=4, in_channels=1, image_size=8, width=1)
    bn = torch.nn.BatchNorm2d(1)
    net = torch.nn.Sequential(bn, model)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 4, (8,))
    for mode, changes in (("eval", False), ("train", True)):
        bn.reset_running_stats()
        attack = create_attack("pgd", eps=0.1, steps=2, model_mode=mode)
        net.train()
        attack(net, x, y)
        assert bool(bn.num_batches_tracked > 0) == changes
        assert net.training
