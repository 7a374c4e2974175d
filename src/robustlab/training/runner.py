"""From a config to a finished run: build everything, then train with checkpoints and resume.

:func:`prepare` does every check and load that can fail (names, ranges, data files, model shape)
before anything is written; :func:`fit` then creates or reopens the run directory and trains.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, create_attack
from ..config import RunConfig
from ..data import DeviceLoader, ImageDataset, create_dataset
from ..errors import CheckpointError, ConfigError
from ..models import NormalizedModel, count_parameters, create_model, family_spec
from ..progress import Progress
from ..rundir import RunDirectory
from ..store import ResultsStore
from . import create_method
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from .loop import evaluate_epoch, evaluation_batches, train_one_epoch
from .methods import TrainingMethod
from .optim import OPTIMIZERS
from .schedules import Schedule, create_schedule

SELECTION_METRIC = "val_rob_acc"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "no CUDA device is available here; use cpu or auto")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run needs, built and validated, nothing written yet."""

    config: RunConfig
    device: torch.device
    data: ImageDataset
    model: NormalizedModel
    model_spec: dict[str, Any]
    method: TrainingMethod
    eval_attack: Attack
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: DeviceLoader
    extra: dict[str, Any] = field(default_factory=dict)


def load_data(config: RunConfig, device: torch.device) -> ImageDataset:
    """The configured dataset with its validation split, on ``device``."""
    data = create_dataset(
        config.data.name, config.data.root, download=config.data.download, **config.data.options
    )
    if config.data.augment != "auto":
        data = dataclasses.replace(data, augment=config.data.augment)
    data = data.split_validation(config.data.val_size, seed=config.seed)
    return data.to(device)


def model_spec_for(config: RunConfig, data: ImageDataset) -> dict[str, Any]:
    """The arguments of :func:`create_model` for this run (saved in checkpoints to rebuild it)."""
    spec = family_spec(config.model.name)
    return {
        "name": config.model.name,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "width": spec.default_width if config.model.width is None else config.model.width,
        "depth": spec.default_depth if config.model.depth is None else config.model.depth,
        "mean": list(data.mean) if config.model.normalize else None,
        "std": list(data.std) if config.model.normalize else None,
        "options": dict(config.model.options),
    }


def build_model(spec: dict[str, Any]) -> NormalizedModel:
    """Rebuild a model from a saved spec (see :func:`model_spec_for`)."""
    kwargs = {k: v for k, v in spec.items() if k != "options"}
    return create_model(**kwargs, **spec.get("options", {}))


def training_attack(config: RunConfig) -> Attack:
    """The PGD of ``attack.*``. Batches come from the loader, already in [0, 1] with valid
    labels, so the per-call input check (a host-device sync) is skipped in the training step."""
    a = config.attack
    return create_attack(
        "pgd",
        eps=a.eps,
        alpha=a.alpha,
        steps=a.steps,
        norm=a.norm,
        random_start=a.random_start,
        loss=a.loss,
        model_mode=a.bn_mode,
        check_inputs=False,
    )


def evaluation_attack(config: RunConfig) -> Attack:
    e = config.eval
    return create_attack(
        "pgd", eps=e.eps, alpha=e.alpha, steps=e.steps, norm=e.norm, restarts=e.restarts
    )


def prepare(config: RunConfig) -> Experiment:
    """Load data, build model, method, attacks, optimizer and schedule; write nothing.

    The global RNGs are seeded here, before the model is initialized.

    Raises:
        RobustlabError: for any invalid setting or missing data file.
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = load_data(config, device)
    spec = model_spec_for(config, data)
    model = build_model(spec).to(device)
    method = create_method(
        config.method.name, attack=training_attack(config), lam=config.method.lam
    )
    optimizer = OPTIMIZERS.create(
        config.train.optimizer,
        model.parameters(),
        lr=config.train.lr,
        momentum=config.train.momentum,
        weight_decay=config.train.weight_decay,
        nesterov=config.train.nesterov,
    )
    schedule = create_schedule(
        config.train.schedule,
        config.train.epochs,
        config.train.milestones or [],
        config.train.gamma,
        config.train.warmup_epochs,
    )
    loader = DeviceLoader(
        data.train_x,
        data.train_y,
        config.train.batch_size,
        shuffle=True,
        augment=data.augment,
        seed=config.seed,
    )
    return Experiment(
        config,
        device,
        data,
        model,
        spec,
        method,
        evaluation_attack(config),
        optimizer,
        schedule,
        loader,
    )


@dataclass
class FitResult:
    run_id: str
    run_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any] | None

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def _state(
    exp: Experiment,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "model": exp.model.state_dict(),
        "optimizer": exp.optimizer.state_dict(),
        "rng": capture_rng_state(),
        "history": history,
        "best": best,
        "config": exp.config.to_dict(),
        "model_spec": exp.model_spec,
    }


def fit(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    store: ResultsStore | None = None,
    *,
    resume: bool = False,
    show_progress: bool = True,
    on_epoch: Any = None,
) -> FitResult:
    """Train to ``train.epochs``, checkpointing after every epoch; continue a run if ``resume``.

    After each epoch, in this order: the best checkpoint (if improved), the last checkpoint,
    then ``metrics.jsonl`` and the store. A run killed anywhere resumes from its last
    checkpoint; the history saved in it is the truth, and the metrics file and the store are
    rewritten from it, so no epoch is ever recorded twice.
    """
    config = exp.config
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, step = 0, 0
    run.remove_partial_writes()
    if resume and run.last_checkpoint.exists():
        state = load_checkpoint(run.last_checkpoint, map_location=exp.device)
        exp.model.load_state_dict(state["model"])
        exp.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
        history, best = state["history"], state["best"]
    run.rewrite_metrics(history)
    if store is not None:
        store.upsert_run(run_id, run.path.resolve(), config.to_dict())
        store.set_model_shape(run_id, exp.model_spec["width"], exp.model_spec["depth"])
        store.replace_epochs(run_id, history)
    run.update_info(
        status="running", parameters=count_parameters(exp.model), device=str(exp.device)
    )
    wall_start = time.perf_counter()
    epochs = config.train.epochs
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        with Progress(len(exp.loader), f"epoch {epoch + 1}/{epochs}", enabled=show_progress) as bar:
            metrics: dict[str, Any] = {"epoch": epoch + 1}
            metrics.update(
                train_one_epoch(
                    exp.model,
                    exp.method,
                    exp.loader,
                    exp.optimizer,
                    exp.schedule,
                    config.train.lr,
                    epoch,
                    bar,
                )
            )
        step += len(exp.loader)
        if (epoch + 1) % config.eval.every == 0 or epoch + 1 == epochs:
            eval_kwargs = {
                "batch_size": config.eval.batch_size,
                "n_train": config.eval.n_train,
                "n_test": config.eval.n,
            }
            total = evaluation_batches(exp.data, **eval_kwargs)
            with Progress(total, f"eval  {epoch + 1}/{epochs}", enabled=show_progress) as bar:
                metrics.update(
                    evaluate_epoch(
                        exp.model,
                        exp.data,
                        exp.eval_attack,
                        stability_labels=config.eval.stability_labels,
                        progress=bar,
                        **eval_kwargs,
                    )
                )
        metrics["time_s"] = time.perf_counter() - epoch_start
        metrics = _ordered(metrics)
        history.append(metrics)
        if metrics.get(SELECTION_METRIC) is not None and (
            best is None or metrics[SELECTION_METRIC] > best[SELECTION_METRIC]
        ):
            best = metrics
            save_checkpoint(
                run.best_checkpoint,
                {**_state(exp, epoch + 1, step, history, best), "optimizer": None, "rng": None},
            )
        save_checkpoint(run.last_checkpoint, _state(exp, epoch + 1, step, history, best))
        run.append_metrics(metrics)
        if store is not None:
            store.record_epoch(run_id, epoch + 1, metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    info = run.read_info()
    wall = info.get("wall_time_s", 0.0) + (time.perf_counter() - wall_start)
    run.update_info(status="finished", wall_time_s=wall, best_epoch=best["epoch"] if best else None)
    if store is not None:
        store.finish_run(
            run_id, "finished", {"final": history[-1] if history else {}, "best": best}
        )
    return FitResult(run_id, run.path, history, best)


# Column order of metrics.jsonl, the README's schema table and `robustlab show`.
METRIC_ORDER = (
    "epoch",
    "lr",
    "train_loss",
    "train_nat_acc",
    "train_rob_acc",
    "train_stability",
    "val_nat_acc",
    "val_rob_acc",
    "val_stability",
    "test_nat_acc",
    "test_rob_acc",
    "test_stability",
    "time_s",
)


def _ordered(metrics: dict[str, Any]) -> dict[str, Any]:
    ordered = {k: metrics[k] for k in METRIC_ORDER if k in metrics}
    ordered.update({k: v for k, v in metrics.items() if k not in ordered})
    return ordered


def load_trained_model(
    run: RunDirectory, which: str = "last", device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a run's ``last`` or ``best`` checkpoint, in eval mode, and the checkpoint."""
    paths = {"last": run.last_checkpoint, "best": run.best_checkpoint}
    if which not in paths:
        raise ConfigError("--checkpoint", which, "one of last, best")
    path = paths[which]
    if not path.exists():
        raise CheckpointError(
            f"run {str(run.path)!r} has no {which} checkpoint yet ({path.name} missing)"
        )
    state = load_checkpoint(path, map_location=device)
    model = build_model(state["model_spec"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
