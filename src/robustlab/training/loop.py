"""The generic training loop: one epoch of any method, and the per-epoch evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..attacks import Attack
from ..data import DeviceLoader, ImageDataset
from ..evaluation import evaluate_robustness
from ..progress import Progress
from .methods import TrainingMethod
from .schedules import Schedule


def train_one_epoch(
    model: nn.Module,
    method: TrainingMethod,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    base_lr: float,
    epoch: int,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Train ``model`` for one epoch (``epoch`` counts from 0) and return the batch-averaged parts.

    The learning rate is set before every iteration from ``schedule(epoch + i / iterations)``.
    Losses are accumulated on the device and read once at the end of the epoch, so the loop
    adds no host-device synchronization per iteration (except to draw the progress bar).

    Returns:
        ``train_loss`` and ``train_<part>`` for each named part the method returns, each averaged
        over the epoch's examples, and ``lr``, the learning rate of the last iteration.
    """
    model.train()
    iterations = len(loader)
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    lr = base_lr
    for i, (x, y) in enumerate(loader.epoch(epoch)):
        lr = base_lr * schedule(epoch + i / iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = method(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        batch = len(y)
        seen += batch
        for name, value in out.items():
            part = value.detach() * batch
            sums[name] = sums[name] + part if name in sums else part
        if progress is not None:
            if progress.wants_postfix():
                progress.update(1, loss=float(sums["loss"]) / seen)
            else:
                progress.update(1)
    metrics = {f"train_{name}": float(total) / seen for name, total in sums.items()}
    metrics["lr"] = lr
    return metrics


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
    """``<prefix>_nat_acc``, ``<prefix>_rob_acc`` and ``<prefix>_stability`` on (up to ``limit``) points.

    The first ``limit`` points are used, so every epoch is measured on the same points.
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
    }


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
    """Natural and robust accuracy and stability on train (a fixed subset), validation and test.

    Training-set accuracies are measured here, in eval mode under the evaluation attack, rather
    than averaged over the epoch's training batches: they then compare directly with the test
    numbers (the generalization gap of Wen et al. 2020) and cost no extra work inside the
    training step.
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
        metrics.update({"train_nat_acc": None, "train_rob_acc": None, "train_stability": None})
    if data.val_y is not None:
        metrics.update(evaluate_split(model, data.val_x, data.val_y, attack, "val", **kwargs))
    else:
        metrics.update({"val_nat_acc": None, "val_rob_acc": None, "val_stability": None})
    metrics.update(
        evaluate_split(model, data.test_x, data.test_y, attack, "test", limit=n_test, **kwargs)
    )
    return metrics
