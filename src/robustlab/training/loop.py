"""The generic training loop: one epoch of any method, and the per-epoch evaluation."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _faults
from ..attacks import Attack
from ..data import DeviceLoader, ImageDataset
from ..data.loader import ShardedLoader
from ..evaluation import evaluate_robustness
from ..progress import Progress
from .distributed import all_reduce_sum
from .eps_schedules import EpsSchedule
from .methods import TrainingMethod, scaled_attack_gradients
from .numerics import NumericGuard
from .schedules import Schedule, ScheduleClock
from .tracking import IterationTracker


@dataclass
class StepControls:
    """What changes from iteration to iteration, and how each step is computed.

    The learning rate and the training attack's budget follow their schedules in schedule time
    (``clock``: PAS restarts them every period); the attack's step size is scaled with its budget
    so that alpha/eps stays as configured. ``precision`` selects autocast (bf16, fp16 with a
    gradient scaler) for the training step only.
    """

    clock: ScheduleClock
    lr_schedule: Schedule
    base_lr: float
    eps_schedule: EpsSchedule
    attack: Attack | None
    eps_target: float
    alpha_target: float | None
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    # Gradient clipping and the NaN / inf / explosion watch (train.max_grad_norm, ...).
    guard: NumericGuard | None = None

    def apply(self, t: float, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        """Set the learning rate and the attack budget for progress ``t`` (epochs)."""
        tau = self.clock.tau(t)
        lr = self.base_lr * self.lr_schedule(tau)
        for group in optimizer.param_groups:
            group["lr"] = lr
        eps = self.eps_schedule(tau)
        if self.attack is not None:
            self.attack.eps = eps
            if self.alpha_target is not None and hasattr(self.attack, "alpha"):
                scale = eps / self.eps_target if self.eps_target > 0 else 1.0
                self.attack.alpha = self.alpha_target * scale
        return lr, eps

    def autocast(self, device: torch.device) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def attack_gradient_scale(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The factor the training attack's loss gradient is multiplied by (fp16 only).

        The gradient scaler's current scale per example: the attack's loss is a sum over the
        batch and the training loss a mean, so this puts the attack's backward pass at the
        magnitudes the scaler keeps the training backward at, just below fp16's overflow. A
        device tensor (no host read); bf16 has fp32's exponent range and needs no scaling.
        """
        if self.scaler is None:
            return None
        return self.scaler.scale(torch.ones((), device=device)) / batch


# Per-epoch metrics kept under their own names; every other part of a method's output is
# reported as ``train_<part>``. λ is the value at the epoch's end, the others batch averages.
OWN_NAMES = ("nat_risk", "rob_reg")
# Quantiles of the per-batch ratio l_nat / l_rob reported each epoch (its spread, for WAR's ζ).
RATIO_QUANTILES = {"nat_rob_ratio_p10": 0.1, "nat_rob_ratio_median": 0.5, "nat_rob_ratio_p90": 0.9}


def train_step(
    model: nn.Module,
    method: TrainingMethod,
    optimizer: torch.optim.Optimizer,
    controls: StepControls,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    loss_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One training step of any method: its loss (under autocast if asked), the backward pass,
    the optimizer step (through the gradient scaler for fp16), then the method's after-step hook.

    ``loss_weight`` multiplies the loss that is backpropagated (not the one reported): under DDP
    a shard's K·n_r/N (:class:`~robustlab.data.loader.ShardedLoader`), so that DDP's average of
    the ranks' gradients is the gradient of the global batch's mean loss.

    With fp16 the training attack's loss is scaled too (:meth:`StepControls.attack_gradient_scale`),
    so that its input gradients do not underflow to 0 in half precision.

    ``controls.guard`` clips the gradient (after unscaling) and folds the loss and gradient
    norm into its on-device watch (:mod:`.numerics`; no host read here)."""
    if _faults.ACTIVE:  # test-only fault injection (robustlab._faults)
        _faults.trip("train-step")
    if controls.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    scale = controls.attack_gradient_scale(len(y), device)
    with controls.autocast(device), scaled_attack_gradients(scale):
        out = method(model, x, y)
    if _faults.ACTIVE and (poison := _faults.poisoned("loss")) is not None:
        out["loss"] = out["loss"] * poison  # a NaN/inf loss whose gradients poison the weights
    optimizer.zero_grad(set_to_none=True)
    loss = out["loss"] if loss_weight == 1.0 else out["loss"] * loss_weight
    guard, norm = controls.guard, None
    if controls.scaler is not None:
        controls.scaler.scale(loss).backward()
        if guard is not None:
            norm = guard.clip(optimizer, controls.scaler)
        controls.scaler.step(optimizer)
        controls.scaler.update()
    else:
        loss.backward()
        if guard is not None:
            norm = guard.clip(optimizer, None)
        optimizer.step()
    if guard is not None:
        guard.observe(out["loss"], norm)
    method.after_step(model)
    return out


def train_one_epoch(
    model: nn.Module,
    method: TrainingMethod,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    controls: StepControls,
    epoch: int,
    progress: Progress | None = None,
    tracker: IterationTracker | None = None,
) -> dict[str, Any]:
    """Train ``model`` for one epoch (``epoch`` counts from 0) and return the batch-averaged parts.

    Before every iteration the learning rate and ε are set from their schedules at
    ``epoch + i / iterations``. Losses are accumulated on the device and read once at the end of
    the epoch, so the loop adds no host-device synchronization per iteration (except to draw
    the progress bar).

    Returns:
        ``train_loss``, ``nat_risk``, ``rob_reg`` and ``train_<part>`` for each other part,
        averaged over the epoch's examples; ``nat_rob_ratio``, the ratio of the epoch's natural
        risk to its robust regularization (WAR's ζ; ``None`` unless the regularization is > 0),
        and the 10%, 50% and 90% quantiles of the per-batch ratios (``nat_rob_ratio_p10``,
        ``_median``, ``_p90``); ``lam`` (the last λ) and ``lam_trace`` (λ sampled along the
        epoch); ``lr`` and ``eps`` of the last iteration. Under DDP (a
        :class:`~robustlab.data.loader.ShardedLoader`) the sums are all-reduced at the epoch's
        end: every rank reports the global batches' numbers, those of one process. A ``tracker``
        (``train.track_every``) queues its per-iteration records on the device.
    """
    model.train()
    iterations = len(loader)
    sums: dict[str, torch.Tensor] = {}
    ratios: list[torch.Tensor] = []
    sharded = isinstance(loader, ShardedLoader)
    seen = 0
    lr = eps = 0.0
    device = next(iter(model.parameters())).device
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        lr, eps = controls.apply(epoch + i / iterations, optimizer)
        weight = loader.shard_weight if sharded else 1.0
        step = epoch * iterations + i  # the iteration's index in the run
        with tracker.watching(model, step) if tracker is not None else nullcontext():
            out = train_step(model, method, optimizer, controls, x, y, device, weight)
        if tracker is not None:
            tracker.record(step, epoch, out, y, lr, eps)
        batch = len(y)
        seen += batch
        for name, value in out.items():
            if name == "lam":
                continue
            if name == "nat_rob_ratio":
                # Sharded: the shard's terms (summed over the ranks at the end), not its ratio.
                ratios.append(
                    torch.stack([out["nat_risk"], out["rob_reg"]]).detach().float() * batch
                    if sharded
                    else value.detach().float().reshape(())
                )
                continue
            part = value.detach().float() * batch
            sums[name] = sums[name] + part if name in sums else part
        if progress is not None:
            if progress.wants_postfix():
                progress.update(1, loss=float(sums["loss"]) / seen)
            else:
                progress.update(1)
    if sharded:
        seen, sums, ratios = _all_reduced(seen, sums, ratios)
    metrics: dict[str, Any] = {}
    for name, total in sums.items():
        key = "train_loss" if name == "loss" else name if name in OWN_NAMES else f"train_{name}"
        metrics[key] = float(total) / seen
    if ratios:
        metrics.update(_ratio_metrics(metrics["nat_risk"], metrics["rob_reg"], ratios))
    metrics.update(
        {"lr": lr, "eps": eps, "lam": method.lam, "lam_trace": method.lam_schedule.take_trace()}
    )
    return metrics


def _all_reduced(
    seen: int, sums: dict[str, torch.Tensor], terms: list[torch.Tensor]
) -> tuple[int, dict[str, torch.Tensor], list[torch.Tensor]]:
    """The epoch's example count and sums over every rank, and the per-batch ratios of the
    global batches (from each batch's summed ``[l_nat·n, l_rob·n]``): one collective."""
    names = sorted(sums)  # the same on every rank: the same method reports the same parts
    device = sums[names[0]].device if names else torch.device("cpu")
    flat = [torch.tensor([float(seen)], device=device)]
    flat += [sums[name].reshape(1).float() for name in names]
    flat += [t.reshape(2) for t in terms]
    total = all_reduce_sum(torch.cat(flat))
    reduced = {name: total[1 + i] for i, name in enumerate(names)}
    pairs = total[1 + len(names) :].reshape(-1, 2)
    ratios = list((pairs[:, 0] / pairs[:, 1].clamp_min(1e-12)).unbind()) if terms else []
    return round(float(total[0])), reduced, ratios


def _ratio_metrics(
    nat_risk: float, rob_reg: float, ratios: list[torch.Tensor]
) -> dict[str, float | None]:
    """WAR's ratio l_nat / l_rob over an epoch, and the spread of its per-batch values.

    The epoch's ratio is that of the two epoch losses (sums over the epoch's examples), not the
    mean of per-batch ratios: one batch with l_rob near 0 would make that mean arbitrarily large
    (1e12 with the 1e-12 floor), while it moves the ratio of sums by its share of the epoch only.
    """
    quantiles = torch.quantile(
        torch.stack(ratios).double(),
        torch.tensor(list(RATIO_QUANTILES.values()), dtype=torch.float64, device=ratios[0].device),
    ).tolist()
    return {
        "nat_rob_ratio": nat_risk / rob_reg if rob_reg > 0 else None,
        **dict(zip(RATIO_QUANTILES, quantiles, strict=True)),
    }


def evaluate_split(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack,
    prefix: str,
    *,
    batch_size: int,
    stability_labels: str,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """``<prefix>_nat_acc``, ``<prefix>_rob_acc``, ``<prefix>_stability``, ``<prefix>_nat_loss``
    and ``<prefix>_rob_loss`` on (up to ``limit``) points.

    The first ``limit`` points are used, so every epoch is measured on the same points. The
    losses are mean CE against the true labels, natural and at the adversarial examples the
    evaluation keeps (:mod:`robustlab.evaluation.robustness`): no extra attack.
    """
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    result = evaluate_robustness(
        model,
        images,
        labels,
        attack,
        batch_size=batch_size,
        stability_labels=stability_labels,
        progress=progress,
    )
    return {
        f"{prefix}_nat_acc": result.natural_accuracy,
        f"{prefix}_rob_acc": result.robust_accuracy,
        f"{prefix}_stability": result.perturbation_stability,
        f"{prefix}_nat_loss": result.natural_loss,
        f"{prefix}_rob_loss": result.robust_loss,
    }


# What :func:`evaluate_split` reports per split, as ``<prefix>_<name>``.
SPLIT_METRICS = ("nat_acc", "rob_acc", "stability", "nat_loss", "rob_loss")


def split_metric_names(prefix: str) -> list[str]:
    """The per-epoch keys of one split (``train``, ``val``, ``test``)."""
    return [f"{prefix}_{name}" for name in SPLIT_METRICS]


def evaluation_batches(
    data: ImageDataset, batch_size: int, n_train: int, n_test: int | None
) -> int:
    """How many evaluation batches :func:`evaluate_epoch` runs (for the progress bar)."""

    def batches(n: int) -> int:
        return (n + batch_size - 1) // batch_size

    total = batches(min(n_test or len(data.test_y), len(data.test_y)))
    total += batches(min(n_train, len(data.train_y)))
    if data.val_y is not None:
        total += batches(len(data.val_y))
    return total


def evaluate_epoch(
    model: nn.Module,
    data: ImageDataset,
    attack: Attack,
    *,
    batch_size: int,
    stability_labels: str,
    n_train: int,
    n_test: int | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Natural and robust accuracy, stability and natural and robust loss on train (a fixed
    subset), validation and test (:func:`evaluate_split`; a split not measured has ``None``).

    Training-set numbers are measured here, in eval mode under the evaluation attack, rather
    than averaged over the epoch's training batches: they then compare directly with the test
    numbers (the generalization gaps of Wen et al. 2020, App. D.2, Tables 3–5, loss and error)
    and cost no extra work inside the training step.
    """
    kwargs = {"batch_size": batch_size, "stability_labels": stability_labels, "progress": progress}
    metrics: dict[str, Any] = {}
    if n_train > 0:
        metrics.update(
            evaluate_split(
                model, data.train_x, data.train_y, attack, "train", limit=n_train, **kwargs
            )
        )
    else:
        metrics.update(dict.fromkeys(split_metric_names("train")))
    if data.val_y is not None:
        metrics.update(evaluate_split(model, data.val_x, data.val_y, attack, "val", **kwargs))
    else:
        metrics.update(dict.fromkeys(split_metric_names("val")))
    metrics.update(
        evaluate_split(model, data.test_x, data.test_y, attack, "test", limit=n_test, **kwargs)
    )
    return metrics
