"""The shipped configs reproduce their reference scripts' settings; the cyclic LR's peak is a key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustlab.config import RunConfig, build_config
from robustlab.training.schedules import DEFAULT_CYCLIC_PEAK, create_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Per file, the values of the reference script it cites (epochs counted from 0 here: a script's
# `epoch >= 75`, counting from 1, is milestone 74). "bn" is the resolved attack.bn_mode.
EXPECTED = {
    # robust_overfitting train_cifar.py (Rice et al. 2020)
    "cifar10_pgd_at_preact18.toml": {
        "method.name": "pgd_at", "model.name": "preact_resnet18", "model.width": 64,
        "attack.eps": 8 / 255, "attack.alpha": 2 / 255, "attack.steps": 10, "bn": "train",
        "train.epochs": 200, "train.lr": 0.1, "train.schedule": "piecewise",
        "train.milestones": [100, 150], "train.gamma": 0.1, "train.weight_decay": 5e-4,
        "train.momentum": 0.9, "train.batch_size": 128, "data.val_size": 1000,
        "eval.steps": 10, "eval.alpha": 2 / 255,
    },
    # TRADES train_trades_cifar10.py (+ pgd_attack_cifar10.py for evaluation)
    "cifar10_trades_wrn34.toml": {
        "method.name": "trades", "method.lam": 6.0, "model.name": "wrn", "model.depth": 34,
        "model.width": 10, "attack.eps": 0.031, "attack.alpha": 0.007, "attack.steps": 10,
        "bn": "eval", "train.epochs": 76, "train.lr": 0.1, "train.schedule": "piecewise",
        "train.milestones": [74], "train.gamma": 0.1, "train.weight_decay": 2e-4,
        "train.momentum": 0.9, "train.batch_size": 128, "data.val_size": 0,
        "eval.eps": 0.031, "eval.steps": 20, "eval.alpha": 0.003,
    },
    # MART train_wideresnet.py
    "cifar10_mart_wrn34.toml": {
        "method.name": "mart", "method.lam": 6.0, "model.name": "wrn", "model.depth": 34,
        "model.width": 10, "attack.eps": 0.031, "attack.alpha": 0.007, "attack.steps": 10,
        "bn": "eval", "train.epochs": 90, "train.lr": 0.1, "train.schedule": "piecewise",
        "train.milestones": [74, 89], "train.weight_decay": 7e-4, "train.batch_size": 128,
        "eval.steps": 20, "eval.alpha": 0.0031,
    },
    # AWP AT_AWP/train_cifar10.py
    "cifar10_awp_at_preact18.toml": {
        "method.name": "awp", "method.awp_base": "pgd_at", "method.awp_gamma": 0.01,
        "method.awp_warmup": 0, "model.name": "preact_resnet18", "attack.eps": 8 / 255,
        "attack.alpha": 2 / 255, "attack.steps": 10, "bn": "train", "train.epochs": 200,
        "train.lr": 0.1, "train.milestones": [100, 150], "train.weight_decay": 5e-4,
        "train.batch_size": 128, "eval.steps": 20,
    },
    # AWP trades_AWP/train_trades_cifar.py
    "cifar10_awp_trades_wrn34.toml": {
        "method.name": "awp", "method.awp_base": "trades", "method.lam": 6.0,
        "method.awp_gamma": 0.005, "method.awp_warmup": 9, "model.name": "wrn",
        "model.depth": 34, "model.width": 10, "attack.eps": 8 / 255, "attack.alpha": 2 / 255,
        "attack.steps": 10, "bn": "eval", "train.epochs": 200, "train.lr": 0.1,
        "train.milestones": [99, 149], "train.weight_decay": 5e-4, "train.batch_size": 128,
    },
    # fast_adversarial CIFAR10/train_fgsm.py
    "cifar10_fgsm_rs_preact18.toml": {
        "method.name": "fgsm_rs", "model.name": "preact_resnet18", "attack.eps": 8 / 255,
        "attack.alpha": 10 / 255, "bn": "train", "train.epochs": 15, "train.lr": 0.2,
        "train.schedule": "cyclic", "train.cyclic_peak": 0.5, "train.weight_decay": 5e-4,
        "train.momentum": 0.9, "train.batch_size": 128, "method.overfit_action": "flag",
        "eval.steps": 50, "eval.restarts": 10, "eval.alpha": 2 / 255,
    },
    # Wu et al. 2021, section 5.1 and Appendix C
    "cifar10_trades_wrn34_wu2021.toml": {
        "method.name": "trades", "method.lam": 6.0, "model.name": "wrn", "model.depth": 34,
        "model.width": 10, "attack.eps": 0.031, "attack.alpha": 0.007, "attack.steps": 10,
        "bn": "eval", "train.epochs": 100, "train.batch_size": 128, "train.lr": 0.1,
        "train.schedule": "exp_decay", "train.milestones": [75], "eval.eps": 8 / 255,
        "eval.steps": 20, "eval.alpha": 0.007,
    },
    # Liu et al. 2020, Appendix C.1 (VGG-8 on CIFAR-10 with Adam) and their train_normal.py
    "cifar10_vgg_liu2020.toml": {
        "method.name": "pgd_at", "model.name": "vgg", "model.depth": 16, "model.width": 8,
        "model.normalize": False, "attack.eps": 8 / 255, "attack.alpha": 2 / 255,
        "attack.steps": 10, "bn": "eval", "train.epochs": 200, "train.batch_size": 128,
        "train.optimizer": "adam", "train.lr": 1e-3, "train.schedule": "exponential",
        "train.milestones": [100, 150], "train.gamma": 0.1, "train.weight_decay": 1e-3,
        "attack.eps_max": 16 / 255, "eval.steps": 10, "eval.alpha": 2 / 255,
    },
}  # fmt: skip


def _get(config: RunConfig, key: str) -> object:
    return config.attack.bn_mode if key == "bn" else config.get(key)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_config_has_the_reference_values(name: str) -> None:
    config = build_config(CONFIGS / name)
    for key, expected in EXPECTED[name].items():
        value = _get(config, key)
        if isinstance(expected, float):
            assert value == pytest.approx(expected, rel=1e-12), key
        else:
            assert value == expected, key
    assert config.data.name == "cifar10"
    header = (CONFIGS / name).read_text().split("\n[", 1)[0]
    assert header.startswith("#") and len(header.splitlines()) >= 3  # cites its reference


def test_every_cifar_config_is_checked() -> None:
    assert sorted(p.name for p in CONFIGS.glob("cifar10_*.toml")) == sorted(EXPECTED)


def test_the_cyclic_schedule_peaks_where_the_key_says() -> None:
    # fast_adversarial's CIFAR-10 script: CyclicLR up for half of the iterations, down for half.
    half = create_schedule("cyclic", 15, [], 0.1, cyclic_peak=0.5)
    assert half(0) == 0 and half(3.75) == pytest.approx(0.5) and half(7.5) == pytest.approx(1.0)
    assert half(11.25) == pytest.approx(0.5) and half(15) == pytest.approx(0.0)
    assert half(6) < 1.0  # not yet at the peak at 2/5 of the run
    # Default: 2/5, unchanged for runs saved before the key existed.
    assert build_config(None).train.cyclic_peak == DEFAULT_CYCLIC_PEAK == 0.4
    default = create_schedule("cyclic", 15, [], 0.1)
    assert default(6) == pytest.approx(1.0)


def test_the_run_uses_the_configured_peak(fast_run) -> None:
    from robustlab.training.runner import step_controls, training_attack

    config = build_config(None, [*fast_run, "train.schedule=cyclic", "train.cyclic_peak=0.5"])
    controls = step_controls(config, training_attack(config), torch.device("cpu"))
    assert controls.lr_schedule(1.5) == pytest.approx(1.0)  # 3 epochs: the peak at 1.5


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_cyclic_peak_outside_the_run_is_refused(value: str) -> None:
    from robustlab.errors import ConfigError

    with pytest.raises(ConfigError, match="train.cyclic_peak"):
        build_config(None, [f"train.cyclic_peak={value}"])
