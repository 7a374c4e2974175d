"""Loss variation against the closed form of a linear loss: ε times the dual norm of its gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.diagnostics import loss_variation
from robustlab.errors import ConfigError


def first_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A loss linear in the input for a linear model: L(x) = w·x + b, w the first weight row."""
    return logits[:, 0]


@pytest.mark.parametrize(("norm", "order", "random_start"), [("Linf", 1, True), ("L2", 2, False)])
def test_linear_loss_matches_its_closed_form(norm: str, order: int, random_start: bool) -> None:
    """max_{||δ|| ≤ ε} w·(x + δ) − w·x = ε·||w||_q (q dual to the norm), for points far enough
    from the edges of [0, 1] that the box never binds. (L2 PGD from a random start converges to
    the maximizer only geometrically; from x it walks straight to it.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = 0.3 + 0.4 * torch.rand(6, 3, 2, 2)  # in [0.3, 0.7]
    y = torch.zeros(6, dtype=torch.long)
    eps = [0.01, 0.05, 0.2]
    result = loss_variation(
        model, x, y, eps=eps, norm=norm, loss=first_logit, random_start=random_start
    )
    dual = float(model[1].weight[0].detach().norm(p=order))
    for e, values in zip(eps, result.variation, strict=True):
        assert values.tolist() == pytest.approx([e * dual] * 6, rel=1e-4)
    summary = result.summary()
    assert summary["mean"] == pytest.approx([e * dual for e in eps], rel=1e-4)
    assert summary["std"] == pytest.approx([0.0] * 3, abs=1e-5)
    assert summary["loss"] == "first_logit"


def test_cross_entropy_variation_is_nonnegative_and_grows_with_eps(one_thread) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    result = loss_variation(model, x, y, steps=5, restarts=2, batch_size=7)
    assert result.eps == pytest.approx([1 / 255, 2 / 255, 4 / 255])
    assert result.variation.shape == (3, 20)
    assert (result.variation >= 0).all()
    assert result.mean[0] < result.mean[1] < result.mean[2]
    summary = result.summary()
    assert len(summary["mean"]) == len(summary["std"]) == len(summary["per_eps"]) == 3


@pytest.mark.parametrize("eps", [[], [-0.1], [0.1, float("nan")]])
def test_bad_eps_lists_are_refused(eps: list[float]) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="eps="):
        loss_variation(model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), eps=eps)
