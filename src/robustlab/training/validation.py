"""The checks of a run configuration that need the data: what ``robustlab config`` shares with
``robustlab train``.

:func:`~robustlab.config.build_config` checks each key by itself (types, ranges, names). What a
key means can depend on the data and on the other keys: a model family's depths and options, a
method's options, a validation split no larger than the training set, an L2 budget no larger
than the input space. :func:`~robustlab.training.runner.prepare` meets those while it builds the
run; :func:`validate_run` builds the same pieces without their cost (the model on the meta
device, no optimizer state, no loader), so ``robustlab config`` refuses exactly what ``train``
refuses and writes nothing.
"""

from __future__ import annotations

import math

import torch

from ..config import RunConfig
from ..data import ImageDataset
from ..errors import ConfigError


def input_diameter(data: ImageDataset) -> float:
    """The L2 diameter of the input space [0, 1]^(C x H x W): sqrt(C * H * W), the distance
    between the all-black and the all-white image. No two images are farther apart, so an L2
    budget beyond it constrains nothing."""
    channels, height, width = data.train_x.shape[1:]
    return math.sqrt(channels * height * width)


def check_budgets(config: RunConfig, data: ImageDataset) -> None:
    """Refuse an L2 budget (training or evaluation) larger than the input space's diameter.

    An Linf budget is already bounded by 1 (:func:`~robustlab.config.validate`); an L2 one
    depends on the image shape, known only once the data is loaded.

    Raises:
        ConfigError: ``attack.eps`` or ``eval.eps`` is an L2 budget above the diameter.
    """
    diameter = input_diameter(data)
    dims = [str(s) for s in data.train_x.shape[1:]]
    for section in ("attack", "eval"):
        norm = config.get(f"{section}.norm") or config.attack.norm
        eps = config.get(f"{section}.eps")
        if norm == "L2" and eps is not None and eps > diameter:
            raise ConfigError(
                f"{section}.eps",
                eps,
                f"an L2 budget must be <= {diameter:.4g}: no two {data.name} images "
                f"({'x'.join(dims)} in [0, 1]) are farther apart than sqrt({'*'.join(dims)})",
            )


def validate_run(config: RunConfig) -> ImageDataset:
    """Every check :func:`~robustlab.training.runner.prepare` makes, without training state.

    The data is loaded on the CPU (its sizes and shape are what is checked); the model is built
    on the meta device (its family checks width, depth and options, nothing is allocated);
    method, attacks, optimizer and schedules are built as for training.

    Returns:
        The loaded dataset (on the CPU).

    Raises:
        RobustlabError: the first setting ``train`` would refuse, with the same message.
    """
    # Imported here: the runner imports this module for check_budgets.
    from .optim import OPTIMIZERS
    from .runner import (
        build_method,
        build_model,
        evaluation_attack,
        load_data,
        model_spec_for,
        resolve_device,
        step_controls,
        training_attack,
    )

    resolve_device(config.device)
    cpu = torch.device("cpu")
    data = load_data(config, cpu)
    check_budgets(config, data)
    with torch.device("meta"):
        model = build_model(model_spec_for(config, data))
    attack = training_attack(config)
    build_method(config, attack)
    evaluation_attack(config)
    OPTIMIZERS.create(
        config.train.optimizer,
        model.parameters(),
        lr=config.train.lr,
        momentum=config.train.momentum,
        weight_decay=config.train.weight_decay,
        nesterov=config.train.nesterov,
    )
    step_controls(config, attack, cpu)
    return data
