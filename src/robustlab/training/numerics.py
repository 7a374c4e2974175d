"""Numerical faults of training: gradient clipping, the explosion guard, NaN and inf losses.

``train.max_grad_norm`` clips the global L2 norm of the gradient (Pascanu, Mikolov & Bengio
2013, "On the difficulty of training recurrent neural networks", Algorithm 2), after the fp16
gradient scaler has unscaled it, so the bound is in the units of the true gradient.
``train.grad_norm_limit`` is a separate guard: a step whose gradient norm (before clipping)
exceeds it is an explosion, a fault like a NaN or infinite loss.

Faults are found without a host-device synchronization per step: each step folds its loss and
gradient norm into a running maximum on the device (NaN propagates through ``torch.maximum``,
and +inf is its own maximum), read once at the end of the epoch, before anything of that epoch
is evaluated or saved. A faulty epoch therefore never reaches a checkpoint; the run stops, or
(``train.on_nan = "rollback"``) reloads the previous epoch's checkpoint with the learning rate
lowered by ``train.nan_lr_factor``, at most ``train.nan_max_rollbacks`` times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

ON_NAN = ("stop", "rollback")


class NumericalFault(Exception):
    """An epoch produced a NaN or inf loss or an exploding gradient (internal: the runner stops
    or rolls back; the user sees :class:`~robustlab.errors.NumericalFaultError`)."""

    def __init__(self, what: str, epoch: int) -> None:
        super().__init__(f"{what} in epoch {epoch}")
        self.what, self.epoch = what, epoch


@dataclass
class NumericGuard:
    """Clips gradients and watches losses and gradient norms for one run.

    Args:
        max_grad_norm: clip the global gradient norm to this (``None`` or 0: off).
        grad_norm_limit: a gradient norm above this is a fault (``None``: off).
        lr_scale: the product of the rollbacks' learning-rate factors so far (saved in the
            last checkpoint, so a resumed run keeps its lowered rate).
        rollbacks: how many times the run was rolled back.
    """

    max_grad_norm: float | None = None
    grad_norm_limit: float | None = None
    lr_scale: float = 1.0
    rollbacks: int = 0
    # Since the last check, on the training device: [largest loss (NaN if any was NaN), largest
    # gradient norm] and the largest loss ignoring NaNs (+inf if any was: an inf loss comes
    # first, its gradients then make the weights, and every later loss, NaN).
    _worst: torch.Tensor | None = field(default=None, repr=False)
    _largest: torch.Tensor | None = field(default=None, repr=False)

    @property
    def measures_norm(self) -> bool:
        return bool(self.max_grad_norm) or self.grad_norm_limit is not None

    def clip(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
    ) -> torch.Tensor | None:
        """After the backward pass, before the optimizer step: unscale (fp16), measure the global
        gradient norm and clip it; returns the norm before clipping (None when nothing asks)."""
        if not self.measures_norm:
            return None
        if scaler is not None:
            scaler.unscale_(optimizer)  # the scaler's step then knows not to unscale again
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return None
        if self.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = total_norm([p.grad for p in params])
        if scaler is not None:
            # An overflowing fp16 step is the scaler's business (it skips the step and lowers its
            # scale), not an explosion of the true gradient.
            norm = torch.where(norm.isfinite(), norm, torch.zeros_like(norm))
        return norm

    def observe(self, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        """Fold one step's loss and gradient norm into the running maximum (no host read)."""
        loss = loss.detach().float().reshape(())
        step = torch.stack([loss, norm.detach().float().reshape(()) if norm is not None else loss])
        if self._worst is None or self._largest is None:
            self._worst, self._largest = step, loss
        else:
            self._worst = torch.maximum(self._worst, step)
            self._largest = torch.fmax(self._largest, loss)

    def check(self, epoch: int, world_size: int = 1, reduce: Any = None) -> None:
        """Read the epoch's maximum (one host read) and raise :class:`NumericalFault` if a loss
        was NaN or infinite or a gradient norm broke the limit; ``epoch`` counts from 1.

        Under DDP ``reduce`` (an all-reduce sum) makes every rank decide alike: the losses are
        per shard, the gradient norms (of all-reduced gradients) the same on every rank.
        """
        worst, largest = self._worst, self._largest
        self._worst = self._largest = None
        if worst is None or largest is None:
            return
        seen = torch.cat([worst, largest.reshape(1)])
        if reduce is not None:
            seen = reduce(seen) / world_size
        loss, norm, largest_loss = seen.tolist()
        if math.isinf(largest_loss):
            raise NumericalFault("inf loss", epoch)
        if math.isnan(loss):
            raise NumericalFault("NaN loss", epoch)
        if not self.measures_norm:
            return
        if not math.isfinite(norm):
            raise NumericalFault(f"gradient norm {norm}", epoch)
        if self.grad_norm_limit is not None and norm > self.grad_norm_limit:
            raise NumericalFault(
                f"gradient norm {norm:.4g} > train.grad_norm_limit={self.grad_norm_limit:g}", epoch
            )

    def state_dict(self) -> dict[str, Any]:
        return {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore from a checkpoint; an in-process rollback keeps its own lower rate and count
        (the checkpoint it reloads was written before them)."""
        if state:
            self.lr_scale = min(self.lr_scale, float(state["lr_scale"]))
            self.rollbacks = max(self.rollbacks, int(state["rollbacks"]))


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """||concat(tensors)||₂ on the device, no host read: one fused kernel for the per-tensor
    norms (torch.nn.utils.get_total_norm does the same from torch 2.6; we support 2.3)."""
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
