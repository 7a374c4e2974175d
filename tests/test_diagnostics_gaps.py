"""Generalization gaps: losses equal a direct cross-entropy, at the cost of one evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.diagnostics import gaps
from robustlab.evaluation import evaluate_robustness


class CountingModel(nn.Module):
    """Counts the points that pass through the model (forward passes weighted by batch size)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.points = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.points += len(x)
        return self.inner(x)


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def test_losses_equal_cross_entropy_on_the_same_examples(one_thread) -> None:
    model = small_mlp().eval()
    x_train, y_train = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    x_test, y_test = torch.rand(15, 1, 4, 4), torch.randint(0, 3, (15,))
    attack = create_attack("pgd", eps=0.2, steps=3)
    result = gaps(
        model, x_train, y_train, x_test, y_test, attack=attack, batch_size=8, keep_adv=True
    )
    summary = result.summary()
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        losses = getattr(result, split)
        with torch.no_grad():
            natural, adversarial = model(x), model(losses.x_adv)
        assert (losses.x_adv - x).abs().max() <= 0.2 + 1e-6
        assert torch.allclose(losses.natural_loss, F.cross_entropy(natural, y, reduction="none"))
        assert torch.allclose(
            losses.adversarial_loss, F.cross_entropy(adversarial, y, reduction="none")
        )
        assert summary[f"{split}_nat_loss"] == pytest.approx(float(F.cross_entropy(natural, y)))
        assert summary[f"{split}_rob_loss"] == pytest.approx(float(F.cross_entropy(adversarial, y)))
        error = float((adversarial.argmax(1) != y).float().mean())
        assert summary[f"{split}_rob_error"] == pytest.approx(error)
    # The attack raised the loss, and the gaps are test minus train (Wen et al.'s ΔLoss).
    assert summary["test_rob_loss"] > summary["test_nat_loss"]
    for key in ("nat_loss", "rob_loss", "nat_error", "rob_error"):
        assert summary[f"{key}_gap"] == pytest.approx(
            summary[f"test_{key}"] - summary[f"train_{key}"]
        )


def test_costs_one_evaluation_pass_per_split(one_thread) -> None:
    """As many points through the model as evaluate_robustness on train plus on test."""
    x_train, y_train = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    x_test, y_test = torch.rand(13, 1, 4, 4), torch.randint(0, 3, (13,))
    attack = create_attack("pgd", eps=0.2, steps=4, random_start=False)
    counted = CountingModel(small_mlp()).eval()
    gaps(counted, x_train, y_train, x_test, y_test, attack=attack, batch_size=8)
    spent = counted.points
    counted.points = 0
    evaluate_robustness(counted, x_train, y_train, attack, batch_size=8)
    evaluate_robustness(counted, x_test, y_test, attack, batch_size=8)
    assert spent == counted.points == (20 + 13) * (1 + 4 + 1)  # clean, 4 steps, adversarial
