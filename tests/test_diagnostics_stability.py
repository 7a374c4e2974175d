"""The stability split against evaluate_robustness's per-point flags."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks import create_attack
from robustlab.diagnostics import stability
from robustlab.evaluation import evaluate_robustness


def test_split_sums_to_n_and_matches_evaluate_robustness(robust_digits_mlp, one_thread) -> None:
    model, x, y = robust_digits_mlp
    # eps 0.03 populates all four groups (at 0.1 every misclassified point is flipped).
    attack = create_attack("pgd", eps=0.03, steps=5, random_start=False)  # deterministic
    result = stability(model, x, y, attack=attack, batch_size=128)
    reference = evaluate_robustness(model, x, y, attack, batch_size=128)
    counts = result.counts()
    assert sum(counts.values()) == len(y)
    # Every group is populated, so the comparison below checks all four.
    assert min(counts.values()) > 0, counts
    assert torch.equal(result.correct, reference.correct)
    assert torch.equal(result.stable, reference.stable)
    assert counts["robust"] == int(reference.robust.sum())
    assert counts["correct_unstable"] == int((reference.correct & ~reference.stable).sum())
    assert counts["stable_wrong"] == int((~reference.correct & reference.stable).sum())
    summary = result.summary()
    assert summary["robust_accuracy"] == pytest.approx(reference.robust_accuracy)
    assert summary["natural_accuracy"] == pytest.approx(reference.natural_accuracy)
    assert summary["perturbation_stability"] == pytest.approx(reference.perturbation_stability)
    # Conditional robust accuracy: robust among the originally correct (Wen et al. App. D.2).
    expected = int(reference.robust.sum()) / int(reference.correct.sum())
    assert summary["conditional_robust_accuracy"] == expected
    assert expected > summary["robust_accuracy"]


def test_true_labels_leave_misclassified_points_stable(robust_digits_mlp, one_thread) -> None:
    """The published variant attacks the true label only: a misclassified point is never moved
    off its prediction on purpose, so none lands in "neither"."""
    model, x, y = robust_digits_mlp
    attack = create_attack("pgd", eps=0.03, steps=5, random_start=False)
    result = stability(model, x, y, attack=attack, stability_labels="true")
    counts = result.counts()
    assert sum(counts.values()) == len(y)
    assert counts["stable_wrong"] > 0
    predicted = stability(model, x, y, attack=attack).counts()
    assert (
        counts["stable_wrong"] + counts["neither"]
        == predicted["stable_wrong"] + predicted["neither"]
    )
