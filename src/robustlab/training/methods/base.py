"""The training-method interface: ``method(model, x, y) -> {"loss": ..., <named parts>}``.

Every method is written in the form of Wu et al. 2021, eq. (1.1): an objective made of a part
free of λ (``base``, usually the natural risk) plus λ times a robust regularization term. The base
class combines them, so the strength λ can follow a schedule (constant, or WAR's Algorithm 1)
whatever the method, and every method reports its natural risk and robust regularization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...attacks import Attack
from ...errors import ConfigError
from ...registry import Registry
from ..distributed import unwrap
from ..lam_schedules import ConstantLambda, LambdaSchedule

METHODS: Registry[Callable[..., TrainingMethod]] = Registry("method", "method.name")

# The factor the training attack's loss gradient is multiplied by while crafting (fp16 only; see
# :func:`scaled_attack_gradients`). A context variable rather than an attribute, so that a
# wrapper (AWP) crafting through its wrapped method's :meth:`TrainingMethod.craft` scales too.
_ATTACK_GRADIENT_SCALE: ContextVar[torch.Tensor | None] = ContextVar(
    "attack_gradient_scale", default=None
)


@dataclass
class Terms:
    """The parts of one batch's objective.

    Attributes:
        base: the λ-free part of the loss (with graph).
        rob_reg: the robust regularization term; optimized with weight λ when
            ``optimize_rob_reg``, else only measured (detached).
        nat_risk: the natural risk CE(f(x), y), for reporting (``None`` when not measured).
        optimize_rob_reg: whether the loss is ``base + λ·rob_reg`` or ``base`` alone.
        parts: other named values to report (detached scalars).
    """

    base: torch.Tensor
    rob_reg: torch.Tensor | None
    nat_risk: torch.Tensor | None
    optimize_rob_reg: bool = True
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What :meth:`TrainingMethod.on_epoch_end` may use.

    Attributes:
        epoch: the epoch just finished (0-based).
        fixed_x, fixed_y: a fixed batch of training points (the same every epoch), in [0, 1].
    """

    epoch: int
    fixed_x: torch.Tensor
    fixed_y: torch.Tensor


class TrainingMethod(ABC):
    """One adversarial-training objective.

    Subclasses implement :meth:`objective` (and :meth:`craft` when their adversarial examples
    are not simply the training attack's); ``method(model, x, y)`` returns ``{"loss", "nat_risk",
    "rob_reg", "lam", <parts>}``. Splitting crafting from the objective lets a wrapper (AWP)
    evaluate the same objective at other weights for the same adversarial examples. The training loop (generic for every method) does the backward
    pass and the optimizer step, then calls :meth:`after_step` (AWP restores its weights there)
    and, once per epoch, :meth:`on_epoch_end`. The model is in train mode when the method is
    called; the attack sets its own mode (``attack.bn_mode``) and restores train mode after.

    Class attributes:
        default_lam: the published λ (TRADES' and MART's β, 6; Madry's 1).
        attack_name: the registered attack the training attack is built as (``attack.*`` keys).
        attack_defaults: settings the paper fixes for that attack (e.g. a Gaussian start).
        needs_attack: whether a training attack is required.
        reference_bn_mode: the batch-norm mode the method's reference code crafts its training
            attack in (``"train"``: batch statistics, running averages updated by every attack
            step; ``"eval"``: running averages); ``attack.bn_mode = "auto"`` resolves to it.

    Args:
        attack: the training attack.
        lam: λ (``None``: :attr:`default_lam`); the starting value of a λ schedule.
        lam_schedule: how λ evolves per iteration (default constant).
        track_terms: also measure terms the objective does not need (the natural risk of
            PGD-AT, the robust regularization of clean training) so every method reports both.
    """

    default_lam: ClassVar[float | None] = None
    attack_name: ClassVar[str] = "pgd"
    attack_defaults: ClassVar[dict[str, Any]] = {}
    needs_attack: ClassVar[bool] = True
    reference_bn_mode: ClassVar[str] = "eval"

    def __init__(
        self,
        attack: Attack | None = None,
        lam: float | None = None,
        lam_schedule: LambdaSchedule | None = None,
        track_terms: bool = True,
    ) -> None:
        if self.needs_attack and attack is None:
            raise ConfigError("attack", None, f"{type(self).__name__} needs a training attack")
        lam = self.default_lam if lam is None else lam
        if lam is not None and lam < 0:
            raise ConfigError("method.lam", lam, "must be >= 0")
        self.attack = attack
        self.lam_schedule = lam_schedule or ConstantLambda()
        self.lam_schedule.reset(float(lam or 0.0))
        self.track_terms = track_terms
        self.stop_requested = False
        # Maps this process's batch means (l_nat, l_rob) to the global batch's before λ is
        # stepped; set under DDP for an adaptive λ (distributed.GlobalBatchMean), else None.
        self.global_terms: Callable[..., tuple[torch.Tensor, ...]] | None = None

    @property
    def lam(self) -> float:
        """The current λ (a host read: for reporting, not inside the step)."""
        return float(self.lam_schedule.value)

    @classmethod
    def attack_spec(cls, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The registered attack to build the training attack as, and the settings the paper
        fixes for it (``options`` are the method's own, for wrappers that delegate)."""
        return cls.attack_name, dict(cls.attack_defaults)

    @classmethod
    def bn_mode_rule(cls, options: dict[str, Any]) -> str:
        """The batch-norm mode ``attack.bn_mode = "auto"`` resolves to: the reference code's
        (:attr:`reference_bn_mode`; wrappers delegate to the method they wrap)."""
        return cls.reference_bn_mode

    @classmethod
    def default_alpha(cls, eps: float, steps: int, norm: str = "Linf") -> float:
        """The training attack's step size when ``attack.alpha`` is unset: Madry et al.'s
        ``2.5 · eps / steps`` (2/255 for 8/255 and 10 steps)."""
        return 2.5 * eps / steps

    @classmethod
    def step_size_rule(cls, options: dict[str, Any]) -> Callable[[float, int, str], float]:
        """The rule that resolves an unset ``attack.alpha`` (wrappers delegate to their base)."""
        return cls.default_alpha

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The batch's adversarial examples (``None`` when the objective needs none).

        Under :func:`scaled_attack_gradients` (fp16 training) the attack sees the model through
        a wrapper that multiplies its loss gradient by the scale, so that small input gradients
        do not underflow in half precision.
        """
        if self.attack is None:
            return None
        # Under DDP: on the module itself, never through the wrapper (its forward prepares a
        # gradient reduction and broadcasts buffers; see robustlab.training.distributed).
        model = unwrap(model)
        scale = _ATTACK_GRADIENT_SCALE.get()
        x_adv = self.attack(model if scale is None else _GradientScaled(model, scale), x, y)
        sink = _CRAFTED.get()
        if sink is not None:  # per-iteration tracking reads the step's logits on this batch
            sink.append(x_adv)
        return x_adv

    @abstractmethod
    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        """The objective's parts for one batch, given its adversarial examples."""

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Terms:
        return self.objective(model, x, self.craft(model, x, y), y)

    @property
    def adapts_lam(self) -> bool:
        """Whether λ follows a schedule that changes it (WAR) rather than staying constant."""
        return not isinstance(self.lam_schedule, ConstantLambda)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        t = self.terms(model, x, y)
        out: dict[str, torch.Tensor] = {}
        if t.rob_reg is not None and t.optimize_rob_reg:
            nat = (t.nat_risk if t.nat_risk is not None else t.base).detach()
            rob = t.rob_reg.detach()
            if self.global_terms is not None:  # DDP: the global batch's terms, not the shard's
                nat, rob = self.global_terms(nat, rob)
            lam = self.lam_schedule.step(nat, rob)
            out["loss"] = t.base + lam * t.rob_reg
        else:
            lam = self.lam_schedule.value
            out["loss"] = t.base
        out["lam"] = torch.as_tensor(lam).detach()
        if t.nat_risk is not None:
            out["nat_risk"] = t.nat_risk.detach()
        if t.rob_reg is not None:
            out["rob_reg"] = t.rob_reg.detach()
        if t.nat_risk is not None and t.rob_reg is not None:
            # WAR's ratio l_nat / l_rob per batch; its last-epoch mean calibrates ζ.
            out["nat_rob_ratio"] = t.nat_risk.detach() / t.rob_reg.detach().clamp_min(1e-12)
        out.update({name: value.detach() for name, value in t.parts.items()})
        return out

    def after_step(self, model: nn.Module) -> None:  # noqa: B027 - a hook, empty by default
        """Called after each optimizer step (AWP moves the weights back here)."""

    def on_epoch_end(self, model: nn.Module, context: EpochContext) -> dict[str, Any]:
        """Called after each epoch; returns metrics to record. Set :attr:`stop_requested` to end
        training (the fast-AT catastrophic-overfitting detector does)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (λ's state; subclasses add theirs)."""
        return {
            "lam_schedule": self.lam_schedule.state_dict(),
            "stop_requested": self.stop_requested,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam_schedule.load_state_dict(state["lam_schedule"])
        self.stop_requested = state.get("stop_requested", False)


# The examples :meth:`TrainingMethod.craft` returns inside :func:`crafted_examples` (a list to
# append to), for per-iteration tracking (:mod:`robustlab.training.tracking`); None outside.
_CRAFTED: ContextVar[list[torch.Tensor] | None] = ContextVar("crafted", default=None)


@contextmanager
def crafted_examples() -> Iterator[list[torch.Tensor]]:
    """Within the block, every batch of adversarial examples a method crafts is appended to
    the list yielded (wrappers such as AWP craft through their inner method: once)."""
    sink: list[torch.Tensor] = []
    token = _CRAFTED.set(sink)
    try:
        yield sink
    finally:
        _CRAFTED.reset(token)


@contextmanager
def scaled_attack_gradients(scale: torch.Tensor | None) -> Iterator[None]:
    """Within the block, training attacks crafted by :meth:`TrainingMethod.craft` backpropagate
    their loss multiplied by ``scale`` (``None``: unscaled).

    Why: under fp16 autocast the attack's input gradient is computed in half precision, where a
    confidently classified example's loss gradient (``p − onehot``, down to 1e-8 and below)
    underflows to 0; ``sign(0) = 0`` then leaves the example where it is and weakens the attack.
    The same remedy as the gradient scaler's for the weights: multiply the loss. One factor for
    the whole batch is a positive multiple of the loss, so every attack step is unchanged in exact
    arithmetic (L∞ steps take the gradient's sign, L2 steps its normalized direction), batch norm
    in train mode (which couples the examples) included. The logits are cast to fp32 before
    the factor is applied, so the fp32 gradient of the loss is scaled before it is rounded to
    fp16.
    """
    token = _ATTACK_GRADIENT_SCALE.set(scale)
    try:
        yield
    finally:
        _ATTACK_GRADIENT_SCALE.reset(token)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale.to(grad.dtype), None


class _GradientScaled(nn.Module):
    """``model`` with fp32 logits whose loss gradient is multiplied by ``scale`` on the way back
    (see :func:`scaled_attack_gradients`); the model stays a submodule, so mode changes reach it."""

    def __init__(self, model: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaleGradient.apply(self.model(x).float(), self.scale)


@contextmanager
def frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """A train-mode forward pass that leaves batch-norm running statistics untouched.

    Measurement-only passes (the natural risk of PGD-AT, the regularization term of clean
    training) must not change training: with momentum 0 the running averages stay as they were
    while the pass still normalizes with batch statistics, as the optimized pass does.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def measured_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(f(x), y) in the model's current mode, without gradients or side effects."""
    with torch.no_grad(), frozen_batch_norm_statistics(model):
        return F.cross_entropy(model(x), y)
