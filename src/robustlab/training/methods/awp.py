"""Adversarial Weight Perturbation (Wu, Xia & Wang, NeurIPS 2020), wrapping another method."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...attacks import Attack
from ...errors import ConfigError
from ..distributed import unwrap
from ..lam_schedules import LambdaSchedule
from .base import METHODS, EpochContext, Terms, TrainingMethod

# The proxy's single SGD step (the reference's ``proxy_opt = SGD(proxy.parameters(), lr=0.01)``).
# Its size cancels out: the step is rescaled to ||w|| per tensor, so only its direction matters.
PROXY_LR = 0.01
# Added to ||w_proxy − w|| before dividing (the reference's EPS), so a zero gradient gives v = 0.
NORM_EPS = 1e-20
# The published γ per wrapped method (reference: train_cifar10.py --awp-gamma 0.01,
# train_trades_cifar.py --awp-gamma 0.005); generalized AT is Madry's objective, so AT's γ.
DEFAULT_GAMMA = {"pgd_at": 0.01, "gat": 0.01, "trades": 0.005}
# Epochs trained without the weight perturbation. TRADES-AWP's reference starts AWP at
# ``epoch >= --awp-warmup 10`` with epochs counted from 1, so 9 epochs run unperturbed.
DEFAULT_WARMUP = {"trades": 9}
# Methods AWP cannot wrap: clean training has no adversarial loss to perturb the weights
# against, and AWP inside AWP would perturb twice.
NOT_WRAPPABLE = ("clean", "awp")


@METHODS.register("awp")
class AWP(TrainingMethod):
    """Wu, Xia & Wang, "Adversarial Weight Perturbation Helps Robust Generalization" (NeurIPS
    2020), Algorithm 1 (AT-AWP) and its TRADES/MART variants (Appendix D), with the one-step
    weight perturbation of the reference code (csdongxian/AWP, ``utils_awp.py``):

    ``min_w max_{v ∈ V} ρ(w + v)``, where ρ is the wrapped method's objective (``base``, e.g.
    PGD-AT's adversarial loss or TRADES' ``CE + β·KL``) and V bounds each layer's perturbation
    relative to its weight, ``||v_l|| <= γ·||w_l||``. Per iteration:

    1. craft the wrapped method's adversarial examples x' at w;
    2. a proxy copy of the model takes one SGD step (lr 0.01, no momentum) *up* the objective
       ρ(x', w) (train mode, the current λ), giving ``w_p``;
    3. for every weight tensor of more than one dimension (conv and linear weights; biases and
       batch-norm parameters are left alone), ``v = (w_p − w)·||w|| / ||w_p − w||``, i.e.
       ``∇ρ·||w|| / ||∇ρ||`` per tensor, and the model's weights become ``w + γ·v``;
    4. the loss returned is ρ at ``w + γ·v``; the training loop backpropagates it and steps the
       optimizer there, and :meth:`after_step` subtracts ``γ·v`` again, so the gradient taken at
       the perturbed weights updates the unperturbed ones:
       ``w ← w − η·∇ρ(w + γv)``.

    The proxy is a separate copy, so computing v changes neither the model's batch-norm
    statistics nor its ``.grad``. Reported terms (``nat_risk``, ``rob_reg``) are the wrapped
    method's at the perturbed weights; ``awp_loss_gain`` is how much the perturbation raised
    the objective on the batch. During warm-up (and with γ = 0) AWP is the wrapped method.

    Args:
        attack: the training attack (built as the wrapped method's, see :meth:`attack_spec`).
        lam: λ of the wrapped method (``None``: its published default).
        lam_schedule: λ's schedule, shared with the wrapped method.
        track_terms: passed to the wrapped method.
        base: the registered method wrapped (``pgd_at`` default, ``gat``, ``trades``, ...).
        gamma: relative perturbation size γ (``None``: 0.01 for ``pgd_at``/``gat``, 0.005 for
            ``trades``, the reference code's; other methods need it set).
        warmup: epochs trained without the perturbation (``None``: 0, or 9 for ``trades``, the
            reference code's; AWP starts after that many calls of :meth:`on_epoch_end`).
    """

    # λ is the wrapped method's: unset stays unset and resolves to that method's default.
    default_lam = None
    # The default base's (pgd_at); :meth:`bn_mode_rule` follows the wrapped method.
    reference_bn_mode = "train"

    def __init__(
        self,
        attack: Attack | None = None,
        lam: float | None = None,
        lam_schedule: LambdaSchedule | None = None,
        track_terms: bool = True,
        base: str = "pgd_at",
        gamma: float | None = None,
        warmup: int | None = None,
    ) -> None:
        inner_cls = METHODS.get(base)
        if base in NOT_WRAPPABLE or not getattr(inner_cls, "needs_attack", False):
            raise ConfigError(
                "method.awp_base",
                base,
                f"an adversarial method to wrap, not {', '.join(NOT_WRAPPABLE)}",
            )
        if gamma is None:
            if base not in DEFAULT_GAMMA:
                raise ConfigError(
                    "method.awp_gamma",
                    None,
                    f"no published γ for base {base!r}; set it (AT-AWP 0.01, TRADES-AWP 0.005)",
                )
            gamma = DEFAULT_GAMMA[base]
        if gamma < 0:
            raise ConfigError("method.awp_gamma", gamma, "must be >= 0")
        warmup = DEFAULT_WARMUP.get(base, 0) if warmup is None else warmup
        if warmup < 0:
            raise ConfigError("method.awp_warmup", warmup, "must be >= 0")
        self.inner: TrainingMethod = METHODS.create(
            base, attack=attack, lam=lam, lam_schedule=lam_schedule, track_terms=track_terms
        )
        # One λ schedule for both: the wrapped method reads the λ this wrapper steps.
        super().__init__(
            attack,
            lam=float(self.inner.lam_schedule.value),
            lam_schedule=self.inner.lam_schedule,
            track_terms=track_terms,
        )
        self.base = base
        self.gamma = float(gamma)
        self.warmup = int(warmup)
        self.epochs_done = 0
        self._proxy: nn.Module | None = None
        # The perturbation applied to the model, (parameter, γ·v) pairs, until after_step.
        self._applied: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def attack_spec(cls, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The wrapped method's attack (AWP-TRADES crafts with TRADES' KL attack)."""
        base = options.get("base", "pgd_at")
        if base in NOT_WRAPPABLE:  # the constructor reports it
            return cls.attack_name, dict(cls.attack_defaults)
        return METHODS.get(base).attack_spec({})

    @classmethod
    def bn_mode_rule(cls, options: dict[str, Any]) -> str:
        """The wrapped method's reference mode, which is also AWP's own reference's: AT-AWP
        (``AT_AWP/train_cifar10.py``, built on robust_overfitting) crafts PGD in train mode
        (except each epoch's first batch after the first epoch, crafted in the eval mode the
        previous epoch's evaluation left; here every batch is crafted alike), TRADES-AWP
        (``trades_AWP/train_trades_cifar.py``, ``perturb_input``) in eval mode."""
        base = options.get("base", "pgd_at")
        if base in NOT_WRAPPABLE:  # the constructor reports it
            return cls.reference_bn_mode
        return METHODS.get(base).bn_mode_rule({})

    @classmethod
    def step_size_rule(cls, options: dict[str, Any]) -> Any:
        """The wrapped method's step-size rule (AWP-TRADES steps as TRADES does)."""
        base = options.get("base", "pgd_at")
        return cls.default_alpha if base in NOT_WRAPPABLE else METHODS.get(base).step_size_rule({})

    @property
    def active(self) -> bool:
        """Whether this epoch's iterations perturb the weights (warm-up over, γ > 0)."""
        return self.gamma > 0 and self.epochs_done >= self.warmup

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return self.inner.craft(model, x, y)

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        """The wrapped method's objective at the model's current weights."""
        return self.inner.objective(model, x, x_adv, y)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Terms:
        x_adv = self.craft(model, x, y)
        if not self.active:
            return self.objective(model, x, x_adv, y)
        unperturbed = self._perturb(model, x, x_adv, y)
        t = self.objective(model, x, x_adv, y)
        gain = self._combined(t).detach() - unperturbed
        return Terms(
            t.base, t.rob_reg, t.nat_risk, t.optimize_rob_reg, {**t.parts, "awp_loss_gain": gain}
        )

    def _combined(self, t: Terms) -> torch.Tensor:
        """``base + λ·rob_reg`` with the current λ (without stepping λ's schedule)."""
        if t.rob_reg is None or not t.optimize_rob_reg:
            return t.base
        # λ is a 0-dim tensor, on the host (constant λ) or the device (WAR): no copy, no sync.
        return t.base + self.lam_schedule.value * t.rob_reg

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> torch.Tensor:
        """Move the model's weights to ``w + γ·v``; return the objective at ``w`` (detached)."""
        self._applied = []
        proxy = self._sync_proxy(model)
        pairs = [
            (w, w_proxy)
            for w, w_proxy in zip(_module(model).parameters(), proxy.parameters(), strict=True)
            if w.dim() > 1 and w.requires_grad
        ]
        weights = [w for w, _ in pairs]
        proxy_weights = [w_proxy.requires_grad_(True) for _, w_proxy in pairs]
        loss = self._combined(self.inner.objective(proxy, x, x_adv, y))
        if not pairs:
            return loss.detach()
        grads = torch.autograd.grad(loss, proxy_weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads, strict=True):
                if g is None:  # a weight the objective does not use: no direction to move in
                    continue
                # The proxy's SGD step on −ρ would move it by w_p − w = lr·∇ρ. That difference
                # is formed directly rather than by stepping and subtracting two nearly equal
                # float32 tensors, which loses digits (a step of 1e-6 on weights of 1e-1 keeps
                # about two). The proxy itself is not stepped: it is reloaded before each use.
                diff = g * PROXY_LR
                step = diff.mul_(self.gamma * w.norm() / (diff.norm() + NORM_EPS))
                w.add_(step)
                self._applied.append((w, step))
        # Under autocast the low-precision copies of the weights are cached for the whole
        # autocast region (the attack's forward passes filled the cache): drop them so the
        # objective is computed at the perturbed weights, not the cached unperturbed ones.
        torch.clear_autocast_cache()
        return loss.detach()

    def _sync_proxy(self, model: nn.Module) -> nn.Module:
        """The proxy, created once, holding the model's weights, buffers and train/eval flags."""
        module = _module(model)
        if self._proxy is None:
            self._proxy = copy.deepcopy(module)
            for p in self._proxy.parameters():
                p.grad = None
        self._proxy.load_state_dict(module.state_dict())
        for proxy_module, own in zip(self._proxy.modules(), module.modules(), strict=True):
            proxy_module.training = own.training
        return self._proxy

    def after_step(self, model: nn.Module) -> None:
        """Subtract ``γ·v`` again: the update computed at ``w + γ·v`` applies to ``w``."""
        if self._applied:
            with torch.no_grad():
                for w, step in self._applied:
                    w.sub_(step)
            self._applied = []
        self.inner.after_step(model)

    def on_epoch_end(self, model: nn.Module, context: EpochContext) -> dict[str, Any]:
        self.epochs_done += 1
        metrics = self.inner.on_epoch_end(model, context)
        self.stop_requested = self.stop_requested or self.inner.stop_requested
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "epochs_done": self.epochs_done,
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        super().load_state_dict(state)
        self.epochs_done = state["epochs_done"]


def _module(model: nn.Module) -> nn.Module:
    """The module behind a DDP and a ``torch.compile`` wrapper (its state dict keys have no
    prefix). Under DDP each rank perturbs with its own shard's gradient; rank 0's weights are
    broadcast at every epoch's end (:func:`robustlab.training.distributed.sync_from_main`)."""
    return getattr(unwrap(model), "_orig_mod", unwrap(model))
