"""The training step reads nothing back from the device; fp16 attacks keep small gradients;
CUDA runs benchmark cuDNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.config import build_config
from robustlab.training import create_method
from robustlab.training.loop import StepControls, train_step
from robustlab.training.methods import scaled_attack_gradients
from robustlab.training.schedules import ScheduleClock

# ---------------------------------------------------------------------------------------------
# No host read of λ inside the step


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("pgd_at", {"lam": 1.0}),
        ("pgd_at", {"lam": 0.5}),
        ("awp", {"gamma": 0.01, "warmup": 0}),
        ("awp", {"gamma": 0.01, "warmup": 0, "lam": 0.5}),
    ],
    ids=str,
)
def test_the_objective_reads_nothing_back_from_the_device(
    name, options, one_thread, host_reads
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    x_adv = (x + 0.05).clamp(0, 1)
    method = create_method(name, attack=create_attack("pgd", eps=0.1, steps=1), **options)
    method.craft = lambda model, x, y: x_adv  # the attack's own reads are not the method's
    method(model, x, y)  # first call: λ moves to the batch's device
    # Every host read of a tensor during the second step (on a GPU, a synchronization).
    with host_reads() as calls:
        out = method(model, x, y)
        method.after_step(model)
    assert calls == [], calls
    assert torch.isfinite(out["loss"]).all()


def test_pgd_at_decides_madry_once_and_again_after_a_resume() -> None:
    attack = create_attack("pgd", eps=0.1, steps=1)
    madry = create_method("pgd_at", attack=attack, lam=1.0)
    mixed = create_method("pgd_at", attack=attack, lam=0.5)
    assert madry.madry and not mixed.madry
    mixed.load_state_dict(madry.state_dict())  # a checkpoint saved with λ = 1
    assert mixed.madry


# ---------------------------------------------------------------------------------------------
# fp16: the attack's gradient must not underflow


def _confident_model() -> nn.Module:
    """A linear model so sure of class 0 (logit margin 24) that the CE gradient, about 4e-11 per
    logit, underflows to 0 in fp16 (smallest subnormal 6e-8) but not in fp32."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[6.0, 6.0, 6.0, 6.0], [-6.0, -6.0, -6.0, -6.0]]))
    return model


def _controls(attack, scaler) -> StepControls:
    return StepControls(
        clock=ScheduleClock(1),
        lr_schedule=lambda t: 1.0,
        base_lr=0.0,
        eps_schedule=lambda t: attack.eps,
        attack=attack,
        eps_target=attack.eps,
        alpha_target=None,
        precision="fp16",
        scaler=scaler,
    )


def test_fp16_training_attack_still_moves_points_whose_gradient_underflows(one_thread) -> None:
    model = _confident_model().train()
    x, y = torch.full((4, 1, 2, 2), 0.5), torch.zeros(4, dtype=torch.long)
    attack = create_attack("fgsm", eps=0.1, random_start=False, check_inputs=False)
    method = create_method("pgd_at", attack=attack, track_terms=False)
    # The premise: under fp16 autocast, unscaled, the input gradient is exactly 0 (sign 0: no
    # step), while in fp32 it is not.
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(attack(model, x, y), x)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    assert (grad != 0).all()

    crafted: list[torch.Tensor] = []
    craft = method.craft
    method.craft = lambda model, x, y: crafted.append(craft(model, x, y)) or crafted[-1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu")
    train_step(model, method, optimizer, _controls(attack, scaler), x, y, torch.device("cpu"))
    (x_adv,) = crafted
    # Every pixel moved by the full step, in the direction of the fp32 gradient.
    torch.testing.assert_close(x_adv - x, 0.1 * grad.sign())


def test_scaling_the_attack_loss_leaves_its_steps_unchanged(one_thread) -> None:
    # In fp32 (no underflow) a scaled gradient gives exactly the same PGD steps, batch norm in
    # train mode (which couples the examples) included.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ).train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    attack = create_attack("pgd", eps=0.1, steps=3, random_start=False, model_mode="train")
    method = create_method("pgd_at", attack=attack)
    plain = method.craft(model, x, y)
    with scaled_attack_gradients(torch.tensor(1024.0)):
        scaled = method.craft(model, x, y)
    torch.testing.assert_close(scaled, plain, rtol=0, atol=0)


def test_only_fp16_scales_the_attack() -> None:
    attack = create_attack("fgsm", eps=0.1)
    controls = _controls(attack, torch.amp.GradScaler("cpu"))
    scale = controls.attack_gradient_scale(64, torch.device("cpu"))
    assert float(scale) == pytest.approx(65536 / 64)  # the scaler's scale, per example
    controls.scaler = None  # fp32 and bf16 have no scaler
    assert controls.attack_gradient_scale(64, torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------
# cuDNN benchmark for CUDA runs


def test_cuda_runs_benchmark_cudnn_and_cpu_runs_leave_it(monkeypatch, fast_run) -> None:
    from robustlab.training import runner

    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        runner.configure_backends(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        runner.configure_backends(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = previous
    seen: list[torch.device] = []
    monkeypatch.setattr(
        runner, "configure_backends", lambda device, deterministic: seen.append(device)
    )
    runner.prepare(build_config(None, fast_run))
    assert seen == [torch.device("cpu")]
