"""Fast adversarial training with FGSM from a random start (Wong, Rice & Kolter, ICLR 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...attacks import Attack, create_attack, model_mode
from ...errors import ConfigError
from ..lam_schedules import LambdaSchedule
from .base import METHODS, EpochContext
from .pgd_at import PGDAT

OVERFIT_ACTIONS = ("stop", "flag")
# Catastrophic overfitting: the fixed batch's PGD accuracy falls by more than this in one epoch
# (the reference's ``robust_acc - prev_robust_acc < -0.2``).
OVERFIT_DROP = 0.2
# The detector's attack: PGD-5, 1 restart, step eps/4 (the reference's 2/255 at 8/255).
DETECTOR_STEPS = 5
DETECTOR_STEP_FRACTION = 0.25


@METHODS.register("fgsm_rs")
class FGSMRS(PGDAT):
    """Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training" (ICLR
    2020), Algorithm 3 (reference: locuslab/fast_adversarial, ``CIFAR10/train_fgsm.py``).

    Madry's objective ``CE(f(x_adv), y)`` (as ``pgd_at``, λ = 1) with a single FGSM step from a
    uniform random start: ``δ ~ U[−ε, ε]``, ``δ ← Π_ε(δ + α·sign(∇_δ CE(f(x + δ), y)))``,
    ``α = 1.25·ε`` (10/255 at 8/255). The attack is the registered ``fgsm`` with
    ``random_start`` fixed on; ``attack.alpha`` unset resolves to ``1.25·eps``.

    Catastrophic overfitting (section 5.1, the reference's ``--early-stop``): after each epoch
    the fixed training batch is attacked with PGD-5 (the training attack's norm and current ε,
    step ε/4, one random start; the model in eval mode) and its robust accuracy reported as
    ``co_pgd_acc``. When it falls by more than 0.2 from the previous epoch's, ``co_detected``
    is reported and, with ``overfit_action = "stop"`` (default), the model gets back its
    weights from the end of the previous epoch and training stops (:attr:`stop_requested`);
    with ``"flag"`` training goes on unchanged.

    Differences from the reference's check, which runs on the epoch's first (shuffled) batch
    with the model left in train mode: here the batch is the same every epoch and batch norm
    uses its running statistics (and keeps them), so the check has no side effect on training;
    and the reference's PGD stops moving points once misclassified, which changes no accuracy
    that matters here. With an ε schedule, consecutive checks run at different budgets, so a
    rising ε lowers the accuracy by itself.

    Args:
        attack: the training attack (``fgsm`` with ``random_start=True, alpha=1.25·eps``).
        lam: λ (default 1, Madry's objective; see ``pgd_at`` for other values).
        lam_schedule: λ's schedule (default constant).
        track_terms: measure the natural risk (no gradient, no batch-norm update).
        overfit_action: ``"stop"`` (default) or ``"flag"``.
    """

    attack_name: ClassVar[str] = "fgsm"
    attack_defaults: ClassVar[dict[str, Any]] = {"random_start": True}
    # The reference puts the model in train mode once and crafts FGSM there (train_fgsm.py).
    reference_bn_mode: ClassVar[str] = "train"

    def __init__(
        self,
        attack: Attack | None = None,
        lam: float | None = None,
        lam_schedule: LambdaSchedule | None = None,
        track_terms: bool = True,
        overfit_action: str = "stop",
    ) -> None:
        if overfit_action not in OVERFIT_ACTIONS:
            raise ConfigError(
                "method.overfit_action", overfit_action, f"one of {', '.join(OVERFIT_ACTIONS)}"
            )
        super().__init__(attack, lam, lam_schedule, track_terms)
        self.overfit_action = overfit_action
        # The detector attacks at the target budget: an ε warm-up changes the training attack's
        # budget from epoch to epoch, which would move PGD accuracy by itself.
        self.detector_eps = attack.eps if attack is not None else 0.0
        self.prev_acc: float | None = None
        # The model's state dict at the end of the last epoch without overfitting ("stop" only).
        self.prev_weights: dict[str, torch.Tensor] | None = None
        self.co_detected = False

    @classmethod
    def default_alpha(cls, eps: float, steps: int, norm: str = "Linf") -> float:
        """Wong et al.'s FGSM step, ``1.25·eps`` (section 4, Figure 2), whatever ``steps``."""
        return 1.25 * eps

    def on_epoch_end(self, model: nn.Module, context: EpochContext) -> dict[str, Any]:
        acc = self.pgd_accuracy(model, context.fixed_x, context.fixed_y)
        detected = self.prev_acc is not None and acc - self.prev_acc < -OVERFIT_DROP
        if detected:
            self.co_detected = True
            if self.overfit_action == "stop" and self.prev_weights is not None:
                model.load_state_dict(self.prev_weights)
                self.stop_requested = True
                # The kept state stays that of the epoch training stops at.
                return {"co_pgd_acc": acc, "co_detected": True}
        self.prev_acc = acc
        if self.overfit_action == "stop":
            self.prev_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"co_pgd_acc": acc, "co_detected": detected}

    def pgd_accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on ``(x, y)`` under the detector's PGD-5, in eval mode (one host read)."""
        eps = self.detector_eps
        attack = create_attack(
            "pgd",
            eps=eps,
            alpha=DETECTOR_STEP_FRACTION * eps,
            steps=DETECTOR_STEPS,
            norm=self.attack.norm,
            random_start=True,
            model_mode="eval",
        )
        x_adv = attack(model, x, y)
        with torch.no_grad(), model_mode(model, "eval"):
            return float((model(x_adv).argmax(1) == y).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "co_prev_acc": self.prev_acc,
            "co_prev_weights": self.prev_weights,
            "co_detected": self.co_detected,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prev_acc = state["co_prev_acc"]
        self.prev_weights = state["co_prev_weights"]
        self.co_detected = state["co_detected"]
