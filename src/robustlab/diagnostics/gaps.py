"""Generalization gaps: train vs test loss and error, natural and adversarial."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack, model_mode
from ._base import DIAGNOSTICS, DiagnosticResult, as_float, batch_slices, mean_or_nan
from ._plot import SPLIT_COLOURS, new_figure, save, split_label


@dataclass(repr=False)
class SplitLosses:
    """Per-point natural and adversarial cross-entropy and correctness on one split.

    Attributes:
        natural_loss: CE(f(x), y) per point.
        adversarial_loss: CE(f(x_adv), y) per point, x_adv from the attack on the true label.
        natural_correct: f(x) == y; ``adversarial_correct``: f(x_adv) == y.
        x_adv: the adversarial examples, when kept.
    """

    natural_loss: torch.Tensor
    adversarial_loss: torch.Tensor
    natural_correct: torch.Tensor
    adversarial_correct: torch.Tensor
    x_adv: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.natural_loss.numel())

    def __repr__(self) -> str:
        return f"SplitLosses(n={self.n}, {self.means()})"

    def means(self) -> dict[str, float]:
        """Mean losses and error rates (fractions in [0, 1]), keyed as the per-epoch metrics."""
        return {
            "nat_loss": mean_or_nan(self.natural_loss),
            "rob_loss": mean_or_nan(self.adversarial_loss),
            "nat_error": 1.0 - mean_or_nan(self.natural_correct),
            "rob_error": 1.0 - mean_or_nan(self.adversarial_correct),
        }


def loss_pass(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    batch_size: int = 512,
    keep_adv: bool = False,
) -> SplitLosses:
    """Natural and adversarial CE and correctness of every point, in one evaluation pass.

    Per batch: one clean forward pass, the attack, one forward pass on x_adv (the work of
    :func:`robustlab.evaluation.evaluate_robustness` with one attack); the losses come from the
    logits those passes compute anyway, so they cost nothing extra.

    The attack pushes away from the *true* label (the adversarial loss is the robust loss
    max_δ CE(f(x+δ), y) of Madry et al. 2018); for correctly classified points this is the same
    attack as the robustness evaluation's.
    """
    nat_loss, adv_loss, nat_correct, adv_correct, kept = [], [], [], [], []
    with model_mode(model, "eval"):
        for part in batch_slices(len(y), batch_size):
            xb, yb = as_float(x[part]), y[part]
            with torch.no_grad():
                logits = model(xb).float()
            x_adv = attack(model, xb, yb)
            with torch.no_grad():
                adv_logits = model(x_adv).float()
            nat_loss.append(F.cross_entropy(logits, yb, reduction="none").cpu())
            adv_loss.append(F.cross_entropy(adv_logits, yb, reduction="none").cpu())
            nat_correct.append((logits.argmax(1) == yb).cpu())
            adv_correct.append((adv_logits.argmax(1) == yb).cpu())
            if keep_adv:
                kept.append(x_adv.cpu())

    def cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return SplitLosses(
        natural_loss=cat(nat_loss, torch.float32),
        adversarial_loss=cat(adv_loss, torch.float32),
        natural_correct=cat(nat_correct, torch.bool),
        adversarial_correct=cat(adv_correct, torch.bool),
        x_adv=cat(kept, torch.float32) if keep_adv else None,
    )


@dataclass(repr=False)
class GapsResult(DiagnosticResult):
    """Train and test losses and errors, natural and adversarial, and their gaps.

    Attributes:
        train, test: per-point values of each split.
        attack: the attack's name; ``eps``, ``norm``: its threat model.
    """

    train: SplitLosses
    test: SplitLosses
    attack: str
    eps: float
    norm: str

    def gaps(self) -> dict[str, float]:
        """Test minus train, as Wen et al.'s ΔLoss (test − train loss) and ΔAcc (train − test
        accuracy = test − train error) rows."""
        train, test = self.train.means(), self.test.means()
        return {f"{key}_gap": test[key] - train[key] for key in train}

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "attack": self.attack,
            "eps": self.eps,
            "norm": self.norm,
            "n_train": self.train.n,
            "n_test": self.test.n,
        }
        for split, losses in (("train", self.train), ("test", self.test)):
            summary.update({f"{split}_{key}": value for key, value in losses.means().items()})
        summary.update(self.gaps())
        return summary


def plot_gaps(result: GapsResult, path: str | Path) -> Path | None:
    """Train and test bars of loss and error, natural and adversarial, to ``path`` (PNG).

    The rows of Wen, Li & Jia 2020's Tables 3–6 as grouped bars: left the mean cross-entropy,
    right the error (%); each group is annotated with its gap (test − train).

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = new_figure(ncols=2, size=(9.0, 4.0))
    if drawn is None:
        return None
    figure, (loss_axis, error_axis) = drawn
    train, test = result.train.means(), result.test.means()
    gaps = result.gaps()
    width = 0.38
    panels = (
        (loss_axis, ("nat_loss", "rob_loss"), 1.0, "mean cross-entropy (nats)", ".3f", ""),
        (error_axis, ("nat_error", "rob_error"), 100.0, "error (%)", ".1f", " pp"),
    )
    for axis, keys, scale, ylabel, fmt, unit in panels:
        positions = range(len(keys))
        for offset, (split, means, n) in zip(
            (-width / 2, width / 2),
            (("train", train, result.train.n), ("test", test, result.test.n)),
            strict=True,
        ):
            axis.bar(
                [p + offset for p in positions],
                [scale * means[k] for k in keys],
                width,
                color=SPLIT_COLOURS[split],
                label=split_label(split, n),
            )
        top = max(scale * max(train[k], test[k]) for k in keys)
        for p, key in zip(positions, keys, strict=True):
            height = scale * max(train[key], test[key])
            axis.annotate(
                f"gap {scale * gaps[key + '_gap']:+{fmt}}{unit}",
                (p, height + 0.02 * top),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        axis.set_xticks(list(positions), ["natural", f"adversarial ({result.attack})"])
        axis.set_ylabel(ylabel)
        axis.set_ylim(0, 1.15 * top if top > 0 else 1)
    loss_axis.legend(loc="upper left")
    figure.suptitle(
        f"Train vs test under {result.attack} at {result.norm} ε = {result.eps:.4g} "
        "(gap: test − train)"
    )
    return save(figure, path)


@DIAGNOSTICS.register("gaps", data="train_test", attack=True, plot=plot_gaps)
def gaps(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    attack: Attack,
    batch_size: int = 512,
    keep_adv: bool = False,
) -> GapsResult:
    """Generalization gaps of loss and error, natural and adversarial (Wen, Li & Jia 2020).

    Wen et al. show that adversarial robustness shrinks the train–test *loss* gap even where the
    error gap grows (§4.1, Figs. 3, 7, 9; raw data App. D.2, Tables 3–5, and with spectral
    normalization App. B.4.2, Table 6: rows Trn/Test Acc., ΔAcc., Trn/Test Loss, ΔLoss). This
    measures those rows for one model, natural and under ``attack``: mean CE and error on the
    training and test points, and test minus train for each. Keys follow the per-epoch metrics:
    ``train_nat_loss``, ``train_rob_loss``, ``test_nat_error``, ``nat_loss_gap``, ...

    Cost: one evaluation pass per split (see :func:`loss_pass`): no point is attacked twice.

    Args:
        model: the classifier (evaluated in eval mode; its mode is restored after).
        x_train, y_train: training points (the full set or a subset), images in [0, 1] or uint8.
        x_test, y_test: test points.
        attack: a robustlab attack (Wen et al. use L-inf PGD-10, step 2/255, ε 8/255).
        batch_size: points per batch.
        keep_adv: keep the adversarial examples (``result.train.x_adv``, ``result.test.x_adv``).

    Example:
        >>> result = gaps(model, x_tr, y_tr, x_te, y_te, attack=create_attack("pgd", eps=8 / 255))
        >>> result.summary()["rob_loss_gap"]
    """
    train = loss_pass(model, x_train, y_train, attack, batch_size=batch_size, keep_adv=keep_adv)
    test = loss_pass(model, x_test, y_test, attack, batch_size=batch_size, keep_adv=keep_adv)
    return GapsResult(
        train=train,
        test=test,
        attack=getattr(attack, "name", type(attack).__name__),
        eps=float(attack.eps),
        norm=attack.norm,
    )
