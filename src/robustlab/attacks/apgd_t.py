"""APGD-T: APGD on the targeted DLR loss, one run per likely target class (Croce & Hein, 2020)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .apgd import APGDBase, LossForRun
from .base import ATTACKS
from .functional import LossFn, dlr_targeted


@ATTACKS.register("apgd-t")
class APGDT(APGDBase):
    """Targeted Auto-PGD, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690),
    section 3 (Algorithm 1 on the targeted DLR loss, eq. 6). For ``t = 2 .. targets + 1``
    it runs APGD towards the class with the t-th largest clean logit, ``restarts`` times each,
    on the points that no earlier run has fooled; a point counts as fooled once it is
    misclassified (as any class).

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations per run (default 100).
        restarts: runs per target class (default 1).
        targets: how many of the most likely wrong classes to target (default 9); must
            be smaller than the model's number of classes, which must be at least 4.
        eot_iter: gradients averaged per iteration, for randomized models (default 1).
        rho: step-size halving threshold of condition 1 (default 0.75).
        model_mode: ``"eval"`` (default) or ``"train"``.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("apgd-t", eps=8 / 255, targets=9)
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "Linf",
        steps: int = 100,
        restarts: int = 1,
        targets: int = 9,
        eot_iter: int = 1,
        rho: float = 0.75,
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, steps, restarts, eot_iter, rho, model_mode, check_inputs)
        if targets <= 0:
            raise ConfigError("targets", targets, "must be > 0")
        self.targets = int(targets)

    def _runs(self, logits: torch.Tensor) -> list[LossForRun]:
        classes = logits.shape[1]
        if classes < 4:
            raise ConfigError(
                "n_classes", classes, "APGD-T's targeted DLR loss needs at least 4 classes"
            )
        if self.targets >= classes:
            raise ConfigError(
                "targets",
                self.targets,
                f"must be < the number of classes ({classes}); with robustlab eval, pass --targets {classes - 1}",
            )
        # Classes by decreasing clean logit: the points attacked are classified correctly, so
        # column 0 is the label and columns 1.. are the wrong classes, most likely first.
        ranking = logits.argsort(dim=1, descending=True)
        return [
            _towards(ranking[:, rank])
            for rank in range(1, self.targets + 1)
            for _ in range(self.restarts)
        ]


def _towards(targets: torch.Tensor) -> LossForRun:
    """The targeted DLR loss towards ``targets`` (one per example of the whole batch), for the
    subset of the batch that a run attacks."""

    def loss_for(todo: torch.Tensor) -> LossFn:
        subset = targets[todo]
        return lambda logits, labels: dlr_targeted(logits, labels, subset)

    return loss_for
