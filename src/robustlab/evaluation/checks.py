"""The checks a careful evaluator runs before trusting a robustness number.

Each check returns a :class:`Flag` (a one-line reason and what to do) or ``None``. They follow
AutoAttack's guard rails (fra31/auto-attack ``checks.py`` and ``flags_doc.md``) and Carlini et al.
2019, "On Evaluating Adversarial Robustness": logits that are probabilities, randomized forward
passes, zero gradients, black-box attacks beating white-box ones (gradient masking), and a model
left in train mode. Flags are printed by ``robustlab eval`` and stored with the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

# Checks run on a sample batch before the attacks: f(model, x, y) -> Flag | None.
PRE_CHECKS: Registry[Callable[[nn.Module, torch.Tensor, torch.Tensor], Flag | None]] = Registry(
    "check", "check"
)

# Square is flagged when it lowers robust accuracy below the white-box attacks' by more than
# this (AutoAttack's threshold, 0.2 percentage points).
SQUARE_GAP = 0.002
BLACK_BOX = ("square",)


@dataclass(frozen=True)
class Flag:
    """A sanity warning: ``code`` for machines, ``message`` (reason; what to do) for people."""

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@PRE_CHECKS.register("probabilities")
def check_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Flag | None:
    """Outputs in [0, 1] that sum to 1 are probabilities: CE and DLR need logits."""
    with torch.no_grad():
        out = model(x)
    if bool((out.min() > -1e-5) & (out.max() < 1 + 1e-5) & ((out.sum(1) - 1).abs() < 1e-5).all()):
        return Flag(
            "probabilities",
            "the model's outputs look like probabilities (in [0, 1], summing to 1); attacks need "
            "logits: remove the final softmax",
        )
    return None


@PRE_CHECKS.register("randomized")
def check_randomized(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 3
) -> Flag | None:
    """Repeated forward passes on the same input must agree, or gradients are noisy samples."""
    with torch.no_grad():
        outputs = [model(x) for _ in range(passes)]
    normalized = [o / o.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-10) for o in outputs]
    spread = max(float((normalized[0] - o).norm(dim=1).max()) for o in normalized[1:])
    if spread > 1e-4:
        return Flag(
            "randomized",
            f"repeated forward passes disagree (normalized logits differ by up to {spread:.2g}): "
            "the model is randomized; evaluate with --attack autoattack --aa-version rand (EOT)",
        )
    return None


@PRE_CHECKS.register("zero_gradients")
def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Flag | None:
    """Points whose input gradient is exactly zero defeat every gradient-based attack."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        return Flag(
            "zero_gradients",
            f"{zero} of {len(x)} sample points have an all-zero input gradient: gradient-based "
            "attacks cannot move them (gradient masking?); trust black-box results (Square) more",
        )
    return None


def check_train_mode(model: nn.Module) -> Flag | None:
    """A model handed over in train mode: batch norm would use batch statistics, dropout be on."""
    if any(module.training for module in model.modules()):
        return Flag(
            "train_mode",
            "the model was in train mode; it was evaluated in eval mode (batch norm running "
            "statistics, no dropout): call model.eval() if that is not what you meant",
        )
    return None


def check_black_box_gap(per_attack: dict[str, float]) -> Flag | None:
    """Square fooling points every white-box attack missed hints at gradient masking."""
    names = list(per_attack)
    for name in BLACK_BOX:
        if name not in per_attack:
            continue
        before = [
            per_attack[n] for n in names[: names.index(name)] if n.split("#")[0] not in BLACK_BOX
        ]
        if before and per_attack[name] < min(before) - SQUARE_GAP:
            gap = min(before) - per_attack[name]
            return Flag(
                "black_box_stronger",
                f"Square lowered robust accuracy by {100 * gap:.1f} points after the white-box "
                "attacks: a sign of gradient masking; the evaluation may be unreliable, try more "
                "Square queries and restarts or an adaptive attack",
            )
    return None


def run_pre_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Flag]:
    """Every registered pre-attack check on a sample batch (the model in eval mode)."""
    flags = [PRE_CHECKS.get(name)(model, x, y) for name in PRE_CHECKS.names()]
    return [flag for flag in flags if flag is not None]


def flags_as_dicts(flags: list[Flag | None]) -> list[dict[str, Any]]:
    return [flag.as_dict() for flag in flags if flag is not None]
