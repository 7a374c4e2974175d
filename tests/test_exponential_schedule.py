"""Liu et al.'s VGG learning rate: Adam at 1e-3, exponentially down to 1e-4 from epoch 100 to
150, then constant (Appendix C.1), as the ``exponential`` schedule and the shipped config."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from robustlab.config import build_config
from robustlab.errors import ConfigError
from robustlab.training.schedules import create_schedule

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10_vgg_liu2020.toml"


def _lr(t: float) -> float:
    config = build_config(CONFIG)
    train = config.train
    factor = create_schedule(train.schedule, train.epochs, train.milestones, train.gamma)
    return train.lr * factor(t)


def test_liu_vgg_schedule_endpoints_and_midpoint() -> None:
    assert _lr(0) == pytest.approx(1e-3)
    assert _lr(99.9) == pytest.approx(1e-3)  # epoch index 99: still the initial LR
    assert _lr(100) == pytest.approx(1e-3)  # the decay starts at epoch 100 ...
    assert _lr(125) == pytest.approx(1e-3 * 0.1**0.5)  # ... geometric: half-way in log space
    assert _lr(150) == pytest.approx(1e-4)  # ... and reaches 1e-4 at 150
    assert _lr(199.5) == pytest.approx(1e-4)  # then stays there


def test_exponential_changes_once_per_epoch_and_decreases() -> None:
    factor = create_schedule("exponential", 200, [100, 150], 0.1)
    assert factor(110.0) == factor(110.99)  # per epoch, as Liu et al.'s code by default
    values = [factor(float(epoch)) for epoch in range(95, 160)]
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert factor(111.0) < factor(110.0)
    # each epoch of the decay multiplies the LR by the same factor, 0.1 ** (1 / 50)
    assert factor(121.0) / factor(120.0) == pytest.approx(0.1 ** (1 / 50))


@pytest.mark.parametrize("milestones", [[100], [150, 100], [100, 150, 175]])
def test_exponential_needs_two_increasing_milestones(milestones: list[int]) -> None:
    with pytest.raises(ConfigError) as info:
        create_schedule("exponential", 200, milestones, 0.1)
    assert info.value.key == "train.milestones"


def test_liu_config_uses_adam_with_their_settings() -> None:
    config = build_config(CONFIG)
    assert config.train.optimizer == "adam" and config.train.momentum == 0.9  # beta1
    assert config.train.milestones == [100, 150] and config.train.epochs == 200
