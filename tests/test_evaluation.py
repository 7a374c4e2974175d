"""Robustness evaluation: natural and robust accuracy and perturbation stability (Wu et al. 2021).

A small convnet with batch norm is PGD-adversarially trained on digits once per module, so that
natural accuracy, robust accuracy and stability are all strictly between 0 and 1 and the
point-wise identities below are not satisfied vacuously.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustlab.attacks import Attack, create_attack, list_attacks
from robustlab.data import DeviceLoader, create_dataset
from robustlab.errors import ConfigError
from robustlab.evaluation import RobustnessResult, evaluate_robustness
from robustlab.training import create_method

EPS = 0.1  # L-inf budget on digits; robust accuracy of the model below is ~65%
STEPS = 10

Trained = tuple[nn.Sequential, torch.Tensor, torch.Tensor]


# Tiny models: one intra-op thread (see the conftest fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A conv + batch-norm net, PGD-adversarially trained on digits for a few epochs (~2 s).

    Returns the model in eval mode and the uint8 test images with their labels.
    """
    torch.manual_seed(0)
    data = create_dataset("digits")
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    method = create_method("pgd_at", attack=create_attack("pgd", eps=EPS, alpha=EPS / 4, steps=5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=64, shuffle=True, seed=0)
    model.train()
    for epoch in range(4):
        for x, y in loader.epoch(epoch):
            loss = method(model, x, y)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model, data.test_x, data.test_y


def _pgd(eps: float = EPS, **options: object) -> Attack:
    """Deterministic PGD (no random start) unless ``options`` say otherwise."""
    options = {"alpha": eps / 4, "steps": STEPS, "random_start": False, **options}
    return create_attack("pgd", eps=eps, **options)


def _assert_same(a: RobustnessResult, b: RobustnessResult) -> None:
    assert torch.equal(a.correct, b.correct)
    assert torch.equal(a.stable, b.stable)
    assert torch.equal(a.robust, b.robust)
    torch.testing.assert_close(a.perturbation_norm, b.perturbation_norm, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def predicted(trained: Trained) -> RobustnessResult:
    model, images, labels = trained
    return evaluate_robustness(model, images, labels, _pgd())


@pytest.fixture(scope="module")
def true_label(trained: Trained) -> RobustnessResult:
    model, images, labels = trained
    return evaluate_robustness(model, images, labels, _pgd(), stability_labels="true")


def test_robust_is_correct_and_stable(trained: Trained, predicted: RobustnessResult) -> None:
    _, _, labels = trained
    r = predicted
    assert r.n == len(labels)
    for flags in (r.correct, r.stable, r.robust):
        assert flags.dtype == torch.bool and flags.shape == (r.n,)
    # Eq. 3.1 of Wu et al., point by point.
    assert torch.equal(r.robust, r.correct & r.stable)
    assert r.robust_accuracy <= r.natural_accuracy
    # Not vacuous: some points are misclassified, some correct ones are broken, some survive.
    assert 0.05 < r.robust_accuracy < r.natural_accuracy < 1.0
    assert 0.05 < r.perturbation_stability < 1.0


@pytest.mark.parametrize("mode", ["predicted", "true"])
def test_flags_match_a_direct_recomputation(trained: Trained, mode: str) -> None:
    """Every flag, recomputed from its definition with the same (deterministic) attack."""
    model, images, labels = trained
    attack = _pgd()
    result = evaluate_robustness(model, images, labels, attack, stability_labels=mode)

    x = images.float() / 255
    with torch.no_grad():
        prediction = model(x).argmax(1)
    x_adv = attack(model, x, prediction if mode == "predicted" else labels)
    with torch.no_grad():
        adv_prediction = model(x_adv).argmax(1)
    assert torch.equal(result.correct, prediction == labels)
    assert torch.equal(result.stable, adv_prediction == prediction)
    # In both modes robust means correct and still correct after the attack.
    assert torch.equal(result.robust, (prediction == labels) & (adv_prediction == labels))
    expected_norm = (x_adv - x).flatten(1).abs().amax(1)
    torch.testing.assert_close(result.perturbation_norm, expected_norm, rtol=0, atol=1e-6)


def test_true_label_variant_inflates_stability(
    predicted: RobustnessResult, true_label: RobustnessResult
) -> None:
    # On correctly classified points both variants attack the same label: identical flags.
    correct = predicted.correct
    assert torch.equal(true_label.correct, correct)
    assert torch.equal(true_label.stable[correct], predicted.stable[correct])
    assert torch.equal(true_label.robust, predicted.robust)
    assert true_label.robust_accuracy == predicted.robust_accuracy
    # On misclassified points the true-label attack pushes away from the true label, not from
    # the (wrong) prediction, so it leaves many of them "stable": the documented inflation.
    wrong = ~correct
    assert wrong.sum() >= 5
    assert true_label.stable[wrong].float().mean() > predicted.stable[wrong].float().mean() + 0.3
    assert true_label.perturbation_stability > predicted.perturbation_stability


@pytest.mark.parametrize("mode", ["predicted", "true"])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("name", list_attacks())
def test_zero_budget(trained: Trained, name: str, norm: str, mode: str) -> None:
    model, images, labels = trained
    attack = create_attack(name, eps=0.0, norm=norm)
    r = evaluate_robustness(model, images, labels, attack, stability_labels=mode)
    assert r.stable.all()
    assert r.perturbation_stability == 1.0
    assert torch.equal(r.robust, r.correct)
    assert r.robust_accuracy == r.natural_accuracy
    assert (r.perturbation_norm == 0).all()


def test_uint8_and_float_images_agree(trained: Trained) -> None:
    model, images, labels = trained
    floats = images.float() / 255
    _assert_same(
        evaluate_robustness(model, images, labels, _pgd()),
        evaluate_robustness(model, floats, labels, _pgd()),
    )
    # With a random start too, given the same seed.
    torch.manual_seed(5)
    from_uint8 = evaluate_robustness(model, images, labels, _pgd(random_start=True))
    torch.manual_seed(5)
    from_float = evaluate_robustness(model, floats, labels, _pgd(random_start=True))
    _assert_same(from_uint8, from_float)


class _Threshold(nn.Module):
    """Class 1 when the mean pixel is above 0.999, else class 0: sensitive to the uint8 scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).mean(1) - 0.999
        return torch.stack([-score, score], dim=1)


def test_uint8_255_is_1() -> None:
    images = torch.tensor([0, 255, 254], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 4, 4)
    labels = torch.tensor([0, 1, 0])
    result = evaluate_robustness(_Threshold(), images, labels, create_attack("fgsm", eps=0.0))
    assert result.correct.all()


@pytest.mark.parametrize("state", ["train", "eval", "mixed"])
def test_model_mode_restored_and_eval_mode_used(
    trained: Trained, predicted: RobustnessResult, state: str
) -> None:
    model, images, labels = trained
    model = copy.deepcopy(model)
    model.train(state != "eval")
    if state == "mixed":
        model[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    result = evaluate_robustness(model, images, labels, _pgd())

    assert {name: m.training for name, m in model.named_modules()} == modes
    # Evaluated in eval mode whatever the mode it was given: the same flags as the eval-mode
    # model, and batch norm's running statistics untouched.
    _assert_same(result, predicted)
    for name, value in buffers.items():
        assert torch.equal(dict(model.named_buffers())[name], value), name


def test_summary(trained: Trained, predicted: RobustnessResult) -> None:
    model, images, labels = trained
    summary = predicted.summary()
    expected = {
        "natural_accuracy",
        "robust_accuracy",
        "perturbation_stability",
        "n",
        "seconds",
        "mean_perturbation_norm",
        "max_perturbation_norm",
    }
    assert expected <= set(summary)
    for key in ("natural_accuracy", "robust_accuracy", "perturbation_stability"):
        assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0
    assert summary["natural_accuracy"] == predicted.natural_accuracy
    assert summary["robust_accuracy"] == predicted.robust_accuracy
    assert summary["perturbation_stability"] == predicted.perturbation_stability
    assert summary["n"] == len(labels)
    assert summary["seconds"] > 0
    assert 0 < summary["mean_perturbation_norm"] <= summary["max_perturbation_norm"] <= EPS + 1e-6
    with torch.no_grad():
        natural = (model(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert summary["natural_accuracy"] == pytest.approx(natural)

    # Under L2, clipping to the image box shortens some perturbations: the norms vary.
    l2 = evaluate_robustness(model, images, labels, create_attack("fgsm", eps=1.0, norm="L2"))
    summary = l2.summary()
    norms = l2.perturbation_norm
    assert summary["max_perturbation_norm"] == pytest.approx(float(norms.max()))
    assert summary["mean_perturbation_norm"] == pytest.approx(float(norms.mean()))
    assert summary["mean_perturbation_norm"] < summary["max_perturbation_norm"] <= 1.0 + 1e-6


@pytest.mark.parametrize("batch_size", [7, 64, 1000])
def test_batch_size_does_not_change_results(
    trained: Trained, predicted: RobustnessResult, batch_size: int
) -> None:
    model, images, labels = trained
    result = evaluate_robustness(model, images, labels, _pgd(), batch_size=batch_size)
    _assert_same(result, predicted)  # the default batch size is 512


def test_progress_advances_once_per_batch(trained: Trained) -> None:
    model, images, labels = trained
    steps: list[int] = []
    evaluate_robustness(model, images, labels, _pgd(), batch_size=100, progress=steps.append)
    assert steps == [1] * -(-len(labels) // 100)


def test_unknown_stability_labels(trained: Trained) -> None:
    model, images, labels = trained
    with pytest.raises(ConfigError, match="stability_labels"):
        evaluate_robustness(model, images, labels, _pgd(), stability_labels="predict")
