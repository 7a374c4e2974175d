"""Margins against a hand computation on a fixed linear model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.diagnostics import margins

# f(x) = W x + b on 4 inputs, 3 classes; fixed numbers, so the hand computation is plain Python.
W = [[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [-1.0, 0.5, 0.0, 2.0]]
B = [0.1, -0.2, 0.0]
X = [[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.3, 0.5], [0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.25, 0.75]]
Y = [2, 0, 1, 0]


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W))
        model[1].bias.copy_(torch.tensor(B))
    return model


def by_hand(x: list[float], y: int) -> dict[str, float]:
    logits = [
        sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(W, B, strict=True)
    ]
    other = max((j for j in range(3) if j != y), key=lambda j: logits[j])
    grad = [wy - wo for wy, wo in zip(W[y], W[other], strict=True)]  # ∇_x (f_y − f_other)
    margin = logits[y] - logits[other]
    total = sum(math.exp(v) for v in logits)
    return {
        "margin": margin,
        "Linf": margin / sum(abs(g) for g in grad),  # dual of L-inf: ℓ1
        "L2": margin / math.sqrt(sum(g * g for g in grad)),
        "probability": math.exp(logits[y]) / total,
    }


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_margins_match_a_hand_computation(norm: str) -> None:
    x = torch.tensor(X).view(4, 1, 2, 2)
    result = margins(linear_model(), x, torch.tensor(Y), norm=norm, batch_size=3, bins=4)
    expected = [by_hand(point, label) for point, label in zip(X, Y, strict=True)]
    assert result.margin.tolist() == pytest.approx([e["margin"] for e in expected], abs=1e-5)
    assert result.normalized_margin.tolist() == pytest.approx([e[norm] for e in expected], abs=1e-5)
    assert result.probability.tolist() == pytest.approx(
        [e["probability"] for e in expected], abs=1e-6
    )
    assert result.loss.tolist() == pytest.approx(
        [-math.log(e["probability"]) for e in expected], abs=1e-5
    )
    assert min(e["margin"] for e in expected) < 0 < max(e["margin"] for e in expected)
    summary = result.summary()
    for key in ("margin_histogram", "normalized_margin_histogram", "probability_histogram"):
        histogram = summary[key]
        assert sum(histogram["counts"]) == 4 and len(histogram["edges"]) == 5
    assert summary["probability_histogram"]["edges"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    quarters = [min(int(e["probability"] * 4), 3) for e in expected]
    assert summary["probability_histogram"]["counts"] == [quarters.count(i) for i in range(4)]
    assert summary["margin"]["mean"] == pytest.approx(
        sum(e["margin"] for e in expected) / 4, abs=1e-5
    )


def test_zero_gradient_puts_the_boundary_at_infinity() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    result = margins(model, torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    assert torch.isinf(result.normalized_margin).all()
    assert result.summary()["normalized_margin"]["n_nonfinite"] == 3
