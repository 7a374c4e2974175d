"""Optimizers by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry(
    "optimizer", "train.optimizer"
)


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> torch.optim.Optimizer:
    """SGD with momentum and L2 weight decay, the adversarial-training standard."""
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov and momentum > 0,
    )


@OPTIMIZERS.register("adam")
def adam(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> torch.optim.Optimizer:
    """Adam (Liu et al. 2020 train LeNet/VGG with it); ``momentum`` is used as beta1."""
    return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
