"""The per-point local Lipschitz estimate and its distribution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.diagnostics import lipschitz
from robustlab.evaluation.lipschitz import local_lipschitz


def test_per_point_values_of_a_linear_model_are_the_dual_norms() -> None:
    """With ε = 0 the path is x itself, and ∇_x CE = W^T (softmax(Wx + b) − e_y) per point."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(9, 1, 4, 4), torch.randint(0, 3, (9,))
    with torch.no_grad():
        grad = (model(x).softmax(1) - F.one_hot(y, 3)) @ model[1].weight
    for norm, order in (("Linf", 1), ("L2", 2)):
        result = lipschitz(model, x, y, eps=0.0, alpha=0.1, steps=2, norm=norm, batch_size=4)
        assert torch.allclose(result.values, grad.norm(p=order, dim=1), rtol=1e-5)


def test_distribution_agrees_with_the_per_epoch_mean(one_thread) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(11, 1, 4, 4), torch.randint(0, 3, (11,))
    result = lipschitz(model, x, y, eps=0.1, steps=3, batch_size=4)
    mean = local_lipschitz(model, x, y, eps=0.1, alpha=2.5 * 0.1 / 3, steps=3)
    assert float(result.values.mean()) == pytest.approx(mean, rel=1e-5)
    summary = result.summary()
    quantiles = list(summary["quantiles"].values())
    assert quantiles == sorted(quantiles)
    assert quantiles[0] == pytest.approx(float(result.values.min()))
    assert quantiles[-1] == pytest.approx(float(result.values.max()))
    assert sum(summary["histogram"]["counts"]) == 11
