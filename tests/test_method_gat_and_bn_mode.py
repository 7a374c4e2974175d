"""Generalized AT clips per example (Wu et al. App. D); training attacks craft in the batch-norm
mode of each method's reference code (``attack.bn_mode = "auto"``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.config import build_config, from_dict, to_toml
from robustlab.training import create_method, list_methods
from robustlab.training.lam_schedules import create_lambda_schedule
from robustlab.training.runner import build_method, prepare, training_attack

# ---------------------------------------------------------------------------------------------
# Generalized AT: max(L(x'_i) − L(x_i), 0) inside the expectation

# The objective is tested on fixed adversarial points; the method still needs an attack.
UNUSED_ATTACK = create_attack("pgd", eps=0.1, steps=1)


def _toy_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear model and a batch whose "adversarial" points raise the loss of some examples and
    lower it for others, so per-example and batch-mean clipping differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    return model, x, x_adv, torch.randint(0, 3, (8,))


def test_generalized_at_clips_each_example_not_the_batch_mean() -> None:
    model, x, x_adv, y = _toy_batch()
    with torch.no_grad():
        gap = F.cross_entropy(model(x_adv), y, reduction="none") - F.cross_entropy(
            model(x), y, reduction="none"
        )
    per_example = float(gap.clamp_min(0).mean())
    batch_mean = float(gap.mean().clamp_min(0))
    # The toy batch really tells the two apart: some examples' gaps are negative.
    assert 0 < int((gap < 0).sum()) < len(gap)
    assert per_example > batch_mean + 1e-3

    method = create_method("gat", attack=UNUSED_ATTACK, lam=2.0)
    terms = method.objective(model.train(), x, x_adv, y)
    assert float(terms.rob_reg.detach()) == pytest.approx(per_example, rel=1e-6)
    assert float(terms.parts["clipped_share"]) == pytest.approx(float((gap < 0).float().mean()))
    nat = F.cross_entropy(model(x), y)
    assert float(terms.base.detach()) == pytest.approx(float(nat.detach()), rel=1e-6)


def test_war_ratio_uses_the_per_example_clipped_regularizer() -> None:
    model, x, x_adv, y = _toy_batch()
    method = create_method(
        "gat", attack=UNUSED_ATTACK, lam=0.5, lam_schedule=create_lambda_schedule("war", zeta=2.0)
    )
    method.craft = lambda model, x, y: x_adv  # fixed adversarial points: the objective is tested
    out = method(model.train(), x, y)
    with torch.no_grad():
        nat = F.cross_entropy(model(x), y, reduction="none")
        rob = (F.cross_entropy(model(x_adv), y, reduction="none") - nat).clamp_min(0).mean()
    lam = max(0.5 + 0.1 * (2.0 - float(nat.mean()) / float(rob)), 0.0)
    assert float(out["lam"]) == pytest.approx(lam, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(nat.mean() + lam * rob), rel=1e-5)
    assert 0 < float(out["clipped_share"]) < 1


def test_the_clipped_share_is_reported_per_epoch(fast_run, one_thread) -> None:
    from robustlab.training.loop import train_one_epoch

    exp = prepare(build_config(None, [*fast_run, "method.name=gat", "eval.final=false"]))
    metrics = train_one_epoch(
        exp.train_model, exp.method, exp.loader, exp.optimizer, exp.controls, 0
    )
    assert 0.0 <= metrics["train_clipped_share"] <= 1.0
    assert metrics["rob_reg"] >= 0.0


# ---------------------------------------------------------------------------------------------
# attack.bn_mode = "auto": the reference code's mode, per method

# The mode each reference crafts its training attack in (README, "Training methods"):
# robust_overfitting train_cifar.py (PGD-AT, and generalized AT built on it), fast_adversarial
# CIFAR10/train_fgsm.py and AWP's AT_AWP/train_cifar10.py craft in train mode; TRADES'
# trades_loss, MART's mart_loss and AWP's trades_AWP perturb_input call model.eval() first;
# clean training's attack only measures, in eval mode, without touching batch-norm statistics.
REFERENCE_MODES = {
    "clean": "eval",
    "pgd_at": "train",
    "gat": "train",
    "fgsm_rs": "train",
    "trades": "eval",
    "mart": "eval",
    "awp": "train",
}
AWP_BASES = {"pgd_at": "train", "gat": "train", "trades": "eval"}


def test_every_registered_method_has_a_reference_mode() -> None:
    assert sorted(REFERENCE_MODES) == sorted(list_methods())


def _cases() -> list[tuple[list[str], str]]:
    cases = [([f"method.name={name}"], mode) for name, mode in REFERENCE_MODES.items()]
    cases += [
        (["method.name=awp", f"method.awp_base={base}"], mode) for base, mode in AWP_BASES.items()
    ]
    return cases


@pytest.mark.parametrize(("overrides", "mode"), _cases(), ids=lambda v: str(v))
def test_auto_resolves_to_the_reference_mode_and_is_saved(overrides, mode) -> None:
    config = build_config(None, overrides)
    assert config.attack.bn_mode == mode
    assert f'bn_mode = "{mode}"' in to_toml(config)  # config.toml holds the resolved mode
    # An explicit choice is kept whatever the method.
    for forced in ("eval", "train"):
        assert build_config(None, [*overrides, f"attack.bn_mode={forced}"]).attack.bn_mode == forced


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )


@pytest.mark.parametrize(("overrides", "mode"), _cases(), ids=lambda v: str(v))
def test_the_training_attack_crafts_in_the_resolved_mode(overrides, mode, one_thread) -> None:
    config = build_config(None, [*overrides, "attack.steps=2", "attack.eps=0.1"])
    method = build_method(config, training_attack(config))
    net = _bn_net().train()
    seen: list[bool] = []
    net[2].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    method.craft(net, x, y)
    assert seen and set(seen) == {mode == "train"}
    assert all(m.training for m in net.modules())  # train mode restored after crafting


def test_an_unresolved_auto_is_resolved_when_the_attack_is_built() -> None:
    # A RunConfig built without build_config (no resolution) still crafts in the reference mode.
    raw = from_dict({"method": {"name": "trades"}})
    assert raw.attack.bn_mode == "auto"
    assert training_attack(raw).model_mode == "eval"
    assert training_attack(from_dict({"method": {"name": "pgd_at"}})).model_mode == "train"
