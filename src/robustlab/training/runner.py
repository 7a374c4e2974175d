"""From a config to a finished run: build everything, then train with checkpoints and resume.

:func:`prepare` does every check and load that can fail (names, ranges, data files, model shape)
before anything is written; :func:`fit` then creates or reopens the run directory and trains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _allocator
from .._options import accepted_options, check_options
from .._threads import resolve_threads, set_threads
from ..attacks import ATTACKS, Attack, create_attack
from ..config import DEVICES, RunConfig
from ..data import DeviceLoader, ImageDataset, create_dataset
from ..data.extra import MixedLoader, load_extra
from ..data.loader import ShardedLoader
from ..errors import CheckpointError, ConfigError, DiskFullError, NumericalFaultError
from ..evaluation import evaluate_robustness
from ..evaluation.lipschitz import local_lipschitz
from ..models import NormalizedModel, SnapshotEnsemble, count_parameters, create_model, family_spec
from ..models._base import shape_mismatches
from ..progress import Progress
from ..report.labels import attack_settings, evaluation_label
from ..rundir import METRIC_ORDER, RunDirectory
from ..store import ResultsStore
from . import distributed
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    previous_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    set_aside,
)
from .determinism import configure_backends
from .distributed import all_reduce_sum
from .eps_schedules import create_eps_schedule
from .lam_schedules import create_lambda_schedule
from .loggers import LoggerContext, LoggerGroup, open_loggers
from .loop import StepControls, evaluate_epoch, evaluation_batches, train_one_epoch
from .methods import METHODS, EpochContext, TrainingMethod
from .numerics import NumericalFault, NumericGuard
from .optim import OPTIMIZERS
from .schedules import ScheduleClock, create_schedule
from .spectral_clip import check_clippable, clip_spectral_norms
from .tracking import IterationTracker
from .validation import check_budgets

# ``eval.select``: the per-epoch metrics that can pick the best checkpoint, and whether larger
# is better. Validation robust accuracy is the default (Rice et al.'s early stopping); Xing,
# Song & Cheng 2022 (section 5.1) keep the epoch of smallest adversarial test loss.
SELECTION_RULES: dict[str, bool] = {
    "val_rob_acc": True,
    "val_rob_loss": False,
    "test_nat_loss": False,
    "test_rob_loss": False,
}
SELECTION_METRIC = "val_rob_acc"  # the default of eval.select


def improves(metric: str, value: float | None, best: dict[str, Any] | None) -> bool:
    """Whether an epoch whose ``metric`` is ``value`` beats the best epoch so far (strictly: the
    earliest of equal epochs is kept); an epoch that did not measure it never does."""
    if value is None:
        return False
    if best is None or best.get(metric) is None:
        return True
    return value > best[metric] if SELECTION_RULES[metric] else value < best[metric]


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; the one check of a device name, shared by
    ``train`` (the ``device`` key) and ``eval`` (``--device``, passed as ``key``).

    Raises:
        ConfigError: ``name`` is not one of :data:`~robustlab.config.DEVICES` (``gpu`` would
            otherwise reach ``torch.device`` and fail with a traceback), or ``cuda`` without a GPU.
    """
    if name not in DEVICES:
        raise ConfigError(key, name, f"one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, name, "no CUDA device is available here; use cpu or auto")
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
    controls: StepControls
    loader: DeviceLoader | MixedLoader
    train_model: nn.Module
    fixed_x: torch.Tensor
    fixed_y: torch.Tensor
    # The global RNGs as :func:`prepare` left them; :func:`fit` starts from here, so a run draws
    # the same numbers whatever ran in the process before it (the demo's second run).
    rng_state: dict[str, Any] | None = None
    # This process's place in a torchrun (DDP) run; None for a single process.
    dist: distributed.DistributedContext | None = None
    # Per-iteration records (train.track_every), or None.
    tracker: IterationTracker | None = None
    # With train.on_nan = "rollback": the state a rollback of the first epoch returns to.
    initial_state: dict[str, Any] | None = None
    # The last checkpoint as check_resumable read it, for the resume to use rather than read
    # and verify the file again (taken once).
    resume_state: dict[str, Any] | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes and evaluates (rank 0, or the only process)."""
        return self.dist is None or self.dist.is_main


def load_data(config: RunConfig, device: torch.device) -> ImageDataset:
    """The configured dataset with its validation split (and ``data.train_size``'s subset of
    what remains for training), on ``device``."""
    data = create_dataset(
        config.data.name, config.data.root, download=config.data.download, **config.data.options
    )
    if config.data.augment != "auto":
        data = dataclasses.replace(data, augment=config.data.augment)
    data = data.split_validation(config.data.val_size, seed=config.seed)
    if config.data.train_size is not None:  # ε* against n (Xing et al. Table 3)
        data = data.subsample_train(config.data.train_size, seed=config.seed)
    if config.data.extra:  # RST's pseudo-labelled images (Carmon et al. 2019; WAR†)
        extra_x, extra_y = load_extra(config.data.extra, data.train_x, data.num_classes)
        data = dataclasses.replace(data, extra_x=extra_x, extra_y=extra_y)
    return data.to(device)


def training_loader(config: RunConfig, data: ImageDataset) -> DeviceLoader | MixedLoader:
    """The training batches: the training set alone, or mixed per batch with ``data.extra``
    at ``data.extra_fraction`` (RST's sampler, :class:`~robustlab.data.extra.MixedLoader`)."""
    common = {"augment": data.augment, "seed": config.seed}
    if data.extra_x is not None and data.extra_y is not None:
        return MixedLoader(
            data.train_x,
            data.train_y,
            data.extra_x,
            data.extra_y,
            config.train.batch_size,
            fraction=config.data.extra_fraction,
            **common,
        )
    return DeviceLoader(data.train_x, data.train_y, config.train.batch_size, shuffle=True, **common)


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


# Method-specific config keys and the constructor arguments they feed.
METHOD_KEYS = {
    "awp_base": "base",
    "awp_gamma": "gamma",
    "awp_warmup": "warmup",
    "overfit_action": "overfit_action",
}
FIXED_METHOD_ARGS = ("attack", "lam", "lam_schedule", "track_terms")


def method_options(config: RunConfig) -> dict[str, Any]:
    """The method's own constructor options: the named ``method.*`` keys it takes, and
    ``method.options`` (checked against what the method accepts)."""
    cls = METHODS.get(config.method.name)
    check_options(
        config.method.name,
        cls,
        config.method.options,
        key_prefix="method.options",
        fixed=FIXED_METHOD_ARGS,
    )
    accepted = set(accepted_options(cls))
    options = {
        arg: getattr(config.method, key) for key, arg in METHOD_KEYS.items() if arg in accepted
    }
    return {**{k: v for k, v in options.items() if v is not None}, **config.method.options}


def training_attack(config: RunConfig) -> Attack:
    """The method's training attack, built from ``attack.*`` and the settings its paper fixes.

    Batches come from the loader, already in [0, 1] with valid labels, so the per-call input
    check (a host-device sync) is skipped in the training step.
    """
    a = config.attack
    cls, options = METHODS.get(config.method.name), method_options(config)
    name, fixed = cls.attack_spec(options)
    # build_config resolves "auto"; a RunConfig built by hand may still hold it.
    bn_mode = cls.bn_mode_rule(options) if a.bn_mode == "auto" else a.bn_mode
    settings = {
        "eps": a.eps,
        "alpha": a.alpha,
        "steps": a.steps,
        "norm": a.norm,
        "random_start": a.random_start,
        "loss": a.loss,
        "model_mode": bn_mode,
        **fixed,
        "check_inputs": False,
    }
    accepted = set(accepted_options(ATTACKS.get(name)))
    return create_attack(name, **{k: v for k, v in settings.items() if k in accepted})


def build_method(config: RunConfig, attack: Attack) -> TrainingMethod:
    m = config.method
    return METHODS.create(
        m.name,
        attack=attack,
        lam=m.lam,
        lam_schedule=create_lambda_schedule(m.lam_schedule, m.zeta, m.war_alpha),
        track_terms=m.track_terms,
        **method_options(config),
    )


def step_controls(config: RunConfig, attack: Attack, device: torch.device) -> StepControls:
    t, a = config.train, config.attack
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    return StepControls(
        clock=ScheduleClock(t.epochs, t.periods),
        lr_schedule=create_schedule(
            t.schedule, t.epochs, t.milestones or [], t.gamma, t.warmup_epochs, t.cyclic_peak
        ),
        base_lr=t.lr,
        eps_schedule=create_eps_schedule(a.eps_schedule, a.eps, a.eps_min, a.eps_max, a.eps_warmup),
        attack=attack,
        eps_target=a.eps,
        alpha_target=getattr(attack, "alpha", None),
        precision=t.precision,
        scaler=scaler,
        channels_last=t.channels_last,
        guard=NumericGuard(t.max_grad_norm, t.grad_norm_limit),
    )


def evaluation_attack(config: RunConfig) -> Attack:
    e = config.eval
    return create_attack(
        "pgd", eps=e.eps, alpha=e.alpha, steps=e.steps, norm=e.norm, restarts=e.restarts
    )


def prepare(config: RunConfig, cores: int | None = None) -> Experiment:
    """Load data, build model, method, attacks, optimizer and schedule; write nothing.

    The global RNGs are seeded here, before the model is initialized. torch's CPU threads are
    set from ``threads`` (0: by the model's size within ``cores``, a sweep worker's share;
    :mod:`robustlab._threads`).

    Raises:
        RobustlabError: for any invalid setting or missing data file.
    """
    device = resolve_device(config.device)
    dist = distributed.current()  # set up by `robustlab train` under torchrun
    if dist is not None:
        device = dist.device(device)  # cuda -> this rank's GPU, cuda:LOCAL_RANK
    configure_backends(device, deterministic=config.train.deterministic)
    seed_everything(config.seed)
    data = load_data(config, device)
    check_budgets(config, data)  # the checks robustlab config shares (validation.py)
    spec = model_spec_for(config, data)
    model = build_model(spec).to(device)
    if config.train.init_from:
        load_initial_weights(model, spec, config.train.init_from)
    threads = resolve_threads(
        config.threads,
        model,
        (data.in_channels, data.image_size, data.image_size),
        config.train.batch_size,
        device.type,
        cores,
    )
    set_threads(threads)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.train.spectral_clip is not None:
        check_clippable(model)
    if dist is not None:
        model = distributed.convert_batch_norm(model, config.train.sync_bn, device)
    attack = training_attack(config)
    method = build_method(config, attack)
    optimizer = OPTIMIZERS.create(
        config.train.optimizer,
        model.parameters(),
        lr=config.train.lr,
        momentum=config.train.momentum,
        weight_decay=config.train.weight_decay,
        nesterov=config.train.nesterov,
    )
    loader = training_loader(config, data)
    # Training may run through a compiled wrapper; checkpoints and evaluation use the model itself.
    train_model = torch.compile(model) if config.train.compile else model
    fixed = max(config.train.batch_size, config.eval.lipschitz_n)
    if dist is not None:
        train_model, loader = _distribute(config, dist, device, model, train_model, loader, data)
        if method.adapts_lam:  # WAR: λ from the global batch's terms, the same on every rank
            method.global_terms = distributed.GlobalBatchMean(loader)
    return Experiment(
        config,
        device,
        data,
        model,
        spec,
        method,
        evaluation_attack(config),
        optimizer,
        step_controls(config, attack, device),
        loader,
        train_model,
        fixed_x=data.train_x[:fixed].float().div(255),
        fixed_y=data.train_y[:fixed],
        rng_state=capture_rng_state(device),  # last: after everything that draws at build time
        dist=dist,
        tracker=IterationTracker(model, config.train.track_every, config.train.epochs * len(loader))
        if config.train.track_every
        else None,
    )


def load_initial_weights(model: nn.Module, spec: dict[str, Any], source: str) -> None:
    """``train.init_from``: copy the weights (parameters and buffers) of another run's
    checkpoint into ``model``; optimizer, schedules and epochs start afresh.

    ``source`` is a checkpoint file or a run directory (its ``checkpoints/last.pt``).

    Raises:
        ConfigError: no checkpoint there, a damaged one, or one of another architecture
            (family, width, depth, classes or input shape), named in one line.
    """
    path = Path(source)
    if path.is_dir():
        path = RunDirectory(path).last_checkpoint
    try:
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError as exc:
        raise ConfigError("train.init_from", source, str(exc)) from None
    theirs = state.get("model_spec") or {}
    fields = ("name", "width", "depth", "num_classes", "in_channels", "image_size", "options")
    differ = [
        f"{k} {theirs.get(k)!r} there, {spec.get(k)!r} here"
        for k in fields
        if theirs.get(k) != spec.get(k)
    ]
    if not differ and shape_mismatches(model.state_dict(), state.get("model", {})):
        differ = ["its tensors do not match this model's"]
    if differ:
        raise ConfigError(
            "train.init_from",
            str(path),
            f"a checkpoint of another architecture ({'; '.join(differ)}); weights load "
            "only into the same model",
        )
    model.load_state_dict(state["model"])


def _distribute(
    config: RunConfig,
    dist: distributed.DistributedContext,
    device: torch.device,
    model: nn.Module,
    train_model: nn.Module,
    loader: DeviceLoader | MixedLoader,
    data: ImageDataset,
) -> tuple[nn.Module, ShardedLoader]:
    """DDP around the training model and this rank's share of every global batch
    (:mod:`.distributed`).

    Raises:
        ConfigError: a global batch smaller than the number of processes.
    """
    if config.train.batch_size < dist.world_size:
        raise ConfigError(
            "train.batch_size",
            config.train.batch_size,
            f"the global batch, split over the {dist.world_size} processes: must be >= "
            f"{dist.world_size}",
        )
    probe = data.train_x[:2].float().div(255)
    unused = distributed.unused_parameters(model, probe, data.train_y[:2])
    wrapped = distributed.wrap(train_model, dist, device, unused)
    return wrapped, ShardedLoader(loader, dist.rank, dist.world_size)


@dataclass
class FitResult:
    run_id: str
    run_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def _state(
    exp: Experiment,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    rng_ranks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The last checkpoint; under DDP with every rank's random state (``rng_ranks``)."""
    scaler = exp.controls.scaler
    extra = {"rng_ranks": rng_ranks} if rng_ranks is not None else {}
    return {
        **extra,
        "epoch": epoch,
        "step": step,
        "model": exp.model.state_dict(),
        "optimizer": exp.optimizer.state_dict(),
        "method": exp.method.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(exp.device),
        "history": history,
        "best": best,
        "config": exp.config.to_dict(),
        "model_spec": exp.model_spec,
        "tracker": exp.tracker.state_dict() if exp.tracker is not None else None,
        "numerics": exp.controls.guard.state_dict() if exp.controls.guard is not None else None,
    }


def _model_state(exp: Experiment, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """A weights-only checkpoint (best, PAS snapshots)."""
    return {
        "epoch": epoch,
        "model": exp.model.state_dict(),
        "metrics": metrics,
        "config": exp.config.to_dict(),
        "model_spec": exp.model_spec,
    }


def notice(message: str) -> None:
    """One line on stderr about something the run did by itself (a fallback, a rollback)."""
    print(f"robustlab: {message}", file=sys.stderr, flush=True)


def has_checkpoint(run: RunDirectory) -> bool:
    """Whether the run has a last checkpoint to resume from (or the one kept before it)."""
    return run.last_checkpoint.exists() or previous_checkpoint(run.last_checkpoint).exists()


def _resume_state(run: RunDirectory) -> dict[str, Any]:
    """The last checkpoint; if it is damaged or missing, the one kept before it
    (``last.prev.pt``), with a one-line notice, the damaged file renamed aside as evidence.

    Raises:
        CheckpointError: neither verifies (nothing is loaded, renamed or deleted).
    """
    last = run.last_checkpoint
    previous = previous_checkpoint(last)
    try:
        return load_checkpoint(last, map_location="cpu")
    except CheckpointError as exc:
        if not previous.exists():
            raise
        problem = str(exc)
    try:
        state = load_checkpoint(previous, map_location="cpu")
    except CheckpointError as exc:
        raise CheckpointError(f"{problem}; {exc}; no checkpoint to resume from") from None
    kept = ""
    if last.exists():
        with contextlib.suppress(FileNotFoundError):  # another DDP rank set it aside first
            kept = f"; kept as {set_aside(last).name}"
    notice(f"{problem}{kept}; resuming from {previous.name} (epoch {state['epoch']})")
    return state


def _restore(
    exp: Experiment, run: RunDirectory, state: dict[str, Any] | None = None
) -> tuple[int, int, list[dict[str, Any]], dict[str, Any] | None]:
    """Continue from the last checkpoint (or ``state``), on whatever device this run trains on now.

    The checkpoint is read onto the CPU and ``load_state_dict`` puts each tensor where it
    belongs: parameters and buffers are copied into the model's, optimizer state is cast to its
    parameter's device (except Adam's ``step`` counter, which torch keeps on the CPU so reading
    it costs no GPU sync), and the RNG states stay CPU ByteTensors as the RNG setters require.
    A damaged last checkpoint falls back to the previous one (:func:`_resume_state`).
    """
    if state is None:
        state = _resume_state(run)
    _load_model_state(exp.model, state["model"], run)
    exp.optimizer.load_state_dict(state["optimizer"])
    exp.method.load_state_dict(state["method"])
    if exp.controls.scaler is not None and state.get("scaler") is not None:
        exp.controls.scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks")
    if exp.dist is not None and ranks is not None and len(ranks) == exp.dist.world_size:
        restore_rng_state(ranks[exp.dist.rank], exp.device)  # each rank continues its stream
    else:
        restore_rng_state(state["rng"], exp.device)
        # Another number of processes than the checkpoint's: ranks > 0 draw fresh streams.
        distributed.seed_rank(exp.config.seed, exp.dist)
    if exp.tracker is not None and state.get("tracker") is not None:
        exp.tracker.load_state_dict(state["tracker"])  # distances from the run's own θ₀
    guard = exp.controls.guard
    if guard is not None:  # a run rolled back before keeps its lowered learning rate
        guard.load_state_dict(state.get("numerics"))
        exp.controls.base_lr = exp.config.train.lr * guard.lr_scale
    return state["epoch"], state["step"], state["history"], state["best"]


def check_resumable(exp: Experiment, run: RunDirectory) -> None:
    """Refuse, before ``train --resume`` writes anything, a run whose last checkpoint holds
    another architecture than its config.toml builds (an edited config, copied checkpoints).

    A damaged last checkpoint is left to :func:`_resume_state`'s fallback (checked there).

    Raises:
        CheckpointError: names a mismatched tensor and both shapes (:func:`_load_model_state`).
    """
    try:
        state = load_checkpoint(run.last_checkpoint, map_location="cpu")
    except CheckpointError:
        return
    _check_architecture(exp.model, state["model"], run)
    exp.resume_state = state


def _load_model_state(model: nn.Module, weights: dict[str, Any], run: RunDirectory) -> None:
    """``model.load_state_dict(weights)`` after :func:`_check_architecture` (torch's own error
    is a multi-line list of every mismatched tensor)."""
    _check_architecture(model, weights, run)
    model.load_state_dict(weights)


def _check_architecture(model: nn.Module, weights: dict[str, Any], run: RunDirectory) -> None:
    """One line if ``weights`` do not fit ``model``: names one mismatched tensor, both shapes.

    Raises:
        CheckpointError: the tensor names or shapes differ.
    """
    mismatch = shape_mismatches(model.state_dict(), weights)
    if mismatch:
        name = min(mismatch)
        theirs, ours = (str(shape) if shape else "absent" for shape in mismatch[name])
        raise CheckpointError(
            f"checkpoint {str(run.last_checkpoint)!r} holds another architecture than "
            f"{str(run.config_file)!r} builds ({len(mismatch)} tensors differ, e.g. {name}: "
            f"{theirs} there, {ours} here); resume with the config the run was trained with"
        )


def _spectral_clip(exp: Experiment, epoch: int) -> dict[str, Any]:
    """``train.spectral_clip``: after every ``spectral_clip_every``-th epoch's training (and the
    last), before its evaluation, clip every layer's singular values to at most C
    (:mod:`.spectral_clip`, Wen et al. App. B.4.2) and report ``max_spectral_norm``, the largest
    layer norm after clipping (``None`` in epochs without clipping; the key is absent when
    clipping is off: the exact convolution spectra cost seconds to minutes on wide models).
    """
    train = exp.config.train
    if train.spectral_clip is None:
        return {}
    if (epoch + 1) % train.spectral_clip_every and epoch + 1 != train.epochs:
        return {"max_spectral_norm": None}
    return {"max_spectral_norm": clip_spectral_norms(exp.model, exp.fixed_x, train.spectral_clip)}


def _epoch_diagnostics(exp: Experiment, epoch: int, show_progress: bool) -> dict[str, Any]:
    """Evaluation (train subset, validation, test), local Lipschitz estimate, method hooks."""
    config, metrics = exp.config, {}
    # The method's hook first: a detector that restores earlier weights has them evaluated.
    batch = config.train.batch_size
    context = EpochContext(epoch, exp.fixed_x[:batch], exp.fixed_y[:batch])
    metrics.update(exp.method.on_epoch_end(exp.model, context))
    if exp.dist is not None:
        distributed.sync_from_main(exp.model, exp.method)
        if not exp.dist.is_main:  # rank 0 evaluates; the others wait in the next collective
            return metrics
    last = epoch + 1 == config.train.epochs
    if (epoch + 1) % config.eval.every == 0 or last:
        kwargs = {
            "batch_size": config.eval.batch_size,
            "n_train": config.eval.n_train,
            "n_test": config.eval.n,
        }
        total = evaluation_batches(exp.data, **kwargs)
        with Progress(
            total, f"eval  {epoch + 1}/{config.train.epochs}", enabled=show_progress
        ) as bar:
            metrics.update(
                evaluate_epoch(
                    exp.model,
                    exp.data,
                    exp.eval_attack,
                    stability_labels=config.eval.stability_labels,
                    progress=bar,
                    **kwargs,
                )
            )
    if config.eval.lipschitz_n > 0:
        a, n = config.attack, config.eval.lipschitz_n
        metrics["lipschitz"] = local_lipschitz(
            exp.model,
            exp.fixed_x[:n],
            exp.fixed_y[:n],
            eps=a.eps,
            alpha=a.alpha,
            steps=a.steps,
            norm=a.norm,
        )
    return metrics


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM, after it was marked ``interrupted`` in
    ``run.json`` and the store; the message says what was kept and how to resume.

    A ``KeyboardInterrupt``, so a caller that stops on Ctrl-C still stops.
    """

    def __init__(self, message: str, run_dir: Path, signum: int) -> None:
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum


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
    """Train (see :func:`_fit`); a run stopped by Ctrl-C or SIGTERM is marked ``interrupted``
    in ``run.json`` and the store (not left ``running`` forever), and :class:`RunInterrupted`
    says how to resume it.

    The CLI turns SIGTERM into a ``KeyboardInterrupt`` (:class:`robustlab.cli.main.Terminated`,
    whose ``signum`` is kept); SIGKILL cannot be caught, and ``robustlab runs`` shows such a
    run as interrupted once its process is gone (:func:`robustlab.rundir.shown_status`).
    """
    started = time.perf_counter()
    while True:
        try:
            return _fit(
                exp,
                run,
                run_id,
                store,
                resume=resume,
                show_progress=show_progress,
                on_epoch=on_epoch,
            )
        except KeyboardInterrupt as exc:
            if not exp.is_main:  # rank 0 records the interruption
                raise
            raise _mark_interrupted(exp, run, run_id, store, exc, started) from exc
        except NumericalFault as fault:
            if not _roll_back(exp, run, fault):
                raise _mark_failed(exp, run, run_id, store, fault) from None
            resume = True  # a rollback is a resume from the last checkpoint, in this process
        except DiskFullError as exc:
            raise _mark_disk_full(exp, run, run_id, store, exc) from None


def _roll_back(exp: Experiment, run: RunDirectory, fault: NumericalFault) -> bool:
    """``train.on_nan = "rollback"``: lower the learning rate for the run's resume from its last
    checkpoint (written before the faulty epoch); False when rolling back is off or used up."""
    train, guard = exp.config.train, exp.controls.guard
    if train.on_nan != "rollback" or guard is None or guard.rollbacks >= train.nan_max_rollbacks:
        return False
    guard.rollbacks += 1
    guard.lr_scale *= train.nan_lr_factor
    if exp.tracker is not None:
        exp.tracker.flush()  # the faulty epoch's records are dropped with it
    if exp.is_main:
        notice(
            f"{fault}; rolled back to {_epoch_end(fault.epoch - 1)}, learning rate "
            f"x{train.nan_lr_factor:g} (now {train.lr * guard.lr_scale:.4g}), rollback "
            f"{guard.rollbacks}/{train.nan_max_rollbacks}"
        )
        done = run.read_info().get("rollbacks", [])
        entry = {"epoch": fault.epoch, "fault": fault.what, "lr_scale": guard.lr_scale}
        run.update_info(rollbacks=[*done, entry])
    return True


def _epoch_end(epoch: int) -> str:
    return f"the end of epoch {epoch}" if epoch else "the start of the run"


def _record_stop(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    store: ResultsStore | None,
    status: str,
    *,
    best_effort: bool = False,
    **info: Any,
) -> list[dict[str, Any]]:
    """Record a run that stopped before its end as ``status`` in ``run.json`` (with ``info``:
    its error, signal, wall time) and in the store; returns its epochs so far. ``best_effort``:
    recording is itself a write, which may fail as the one that stopped the run (a full
    disk) did."""
    tolerate = contextlib.suppress(OSError, ValueError) if best_effort else contextlib.nullcontext()
    history: list[dict[str, Any]] = []
    with tolerate:
        history = run.read_metrics()
        if exp.is_main:
            run.update_info(status=status, epochs_done=len(history), **info)
    with tolerate:
        if exp.is_main and store is not None and store.has_run(run_id):
            summary = {"final": history[-1] if history else {}, "stopped_early": False}
            if "error" in info:
                summary["error"] = info["error"]
            store.finish_run(run_id, status, summary)
    return history


def _mark_failed(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    store: ResultsStore | None,
    fault: NumericalFault,
) -> NumericalFaultError:
    """Record a run stopped by a numerical fault as ``failed`` (``run.json``'s ``error``, the
    store's summary); the last checkpoint, of the last good epoch, is left as it is."""
    train, guard = exp.config.train, exp.controls.guard
    reason = str(fault)
    if train.on_nan == "rollback" and guard is not None:
        reason += f" after {guard.rollbacks} rollbacks (train.nan_max_rollbacks={train.nan_max_rollbacks})"
    history = _record_stop(exp, run, run_id, store, "failed", error=reason)
    kept = (
        f"last good checkpoint: epoch {len(history)}, {str(run.last_checkpoint.resolve())!r}"
        if history
        else "no epoch finished (no checkpoint)"
    )
    return NumericalFaultError(f"{reason}; run marked failed; {kept}")


def _mark_disk_full(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    store: ResultsStore | None,
    exc: DiskFullError,
) -> DiskFullError:
    """A full disk stops the run: every write before it is whole (atomic files, store
    transactions), so the run is ``interrupted`` and resumes once there is space. Recording
    that is itself a write, and may fail too: best effort."""
    history = _record_stop(exp, run, run_id, store, "interrupted", best_effort=True, error=str(exc))
    return DiskFullError(
        f"{exc}; stopped after {len(history)}/{exp.config.train.epochs} epochs, the last good "
        f"checkpoint kept; free space, then resume with: robustlab train --resume "
        f"{run.path.resolve()}"
    )


def _mark_interrupted(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    store: ResultsStore | None,
    exc: KeyboardInterrupt,
    started: float,
) -> RunInterrupted:
    """Record the interruption; the epochs in ``metrics.jsonl`` are those the last checkpoint
    holds (an epoch is logged only after its checkpoint is written), so a resume loses none."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    wall = run.read_info().get("wall_time_s", 0.0) + (time.perf_counter() - started)
    history = _record_stop(
        exp, run, run_id, store, "interrupted", signal=signal.Signals(signum).name, wall_time_s=wall
    )
    where = run.path.resolve()
    return RunInterrupted(
        f"interrupted by {signal.Signals(signum).name} after {len(history)}/"
        f"{exp.config.train.epochs} epochs; resume with: robustlab train --resume {where}",
        where,
        signum,
    )


def _fit(
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

    After each epoch, in this order: the best checkpoint (if improved) and the PAS snapshot (at a
    period end), the last checkpoint, then ``metrics.jsonl`` and the store. A run killed anywhere
    resumes from its last checkpoint; the history saved in it is the truth, and the metrics file
    and the store are rewritten from it, so no epoch is ever recorded twice. A method may stop
    training early (fast AT's catastrophic-overfitting detector). At the end the last, best and
    (PAS) ensemble models are evaluated on the whole test set (``eval.final``).
    """
    config = exp.config
    # Under DDP only rank 0 writes (run directory, checkpoints; the others get no store).
    main = exp.is_main
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, step = 0, 0
    if main:
        run.remove_partial_writes()
    if resume and has_checkpoint(run):
        state, exp.resume_state = exp.resume_state, None
        start_epoch, step, history, best = _restore(exp, run, state)
    elif resume and exp.initial_state is not None:  # a rollback of the first epoch
        start_epoch, step, history, best = _restore(exp, run, copy.deepcopy(exp.initial_state))
    elif exp.rng_state is not None:
        restore_rng_state(exp.rng_state, exp.device)
        distributed.seed_rank(config.seed, exp.dist)
    if config.train.on_nan == "rollback" and start_epoch == 0 and exp.initial_state is None:
        # What a rollback of the first epoch returns to (it has no checkpoint before it).
        exp.initial_state = copy.deepcopy(_state(exp, 0, 0, [], None))
    if main:
        run.rewrite_metrics(history)
        # The iterations the last checkpoint has done were recorded; later ones are redone.
        run.truncate_iterations(step)
    recorded = run.read_iterations() if main else []  # for the store and the loggers
    process = {"pid": os.getpid(), "host": socket.gethostname()}  # see rundir.shown_status
    if store is not None:
        store.upsert_run(run_id, run.path.resolve(), config.to_dict(), **process)
        store.set_model_shape(run_id, exp.model_spec["width"], exp.model_spec["depth"])
        store.replace_epochs(run_id, history)
        store.replace_iterations(run_id, recorded)
    if main:
        run.update_info(
            status="running",
            **process,
            parameters=count_parameters(exp.model),
            device=str(exp.device),
            # What this process trains with (README: CPU speed): torch's CPU threads and the
            # allocator settings (the CLI applies the tuned ones itself).
            threads=torch.get_num_threads(),
            malloc=_allocator.applied(),
            num_classes=exp.data.num_classes,  # chance level, for `robustlab calibrate-war`
            **({"world_size": exp.dist.world_size} if exp.dist is not None else {}),
        )
    # Live loggers (train.loggers), rank 0 only, told a resumed run's history first.
    loggers = _open_loggers(exp, run, run_id, history, recorded, step) if main else None
    wall_start = time.perf_counter()
    # Closed however the loop ends: a rollback (train.on_nan) opens them again for its retry,
    # and Ctrl-C or a fault must not leave writers open on the run directory.
    try:
        epochs = config.train.epochs
        for epoch in range(start_epoch, epochs):
            if exp.method.stop_requested:
                break
            epoch_start = time.perf_counter()
            with Progress(
                len(exp.loader), f"epoch {epoch + 1}/{epochs}", enabled=show_progress
            ) as bar:
                metrics: dict[str, Any] = {"epoch": epoch + 1}
                metrics.update(
                    train_one_epoch(
                        exp.train_model,
                        exp.method,
                        exp.loader,
                        exp.optimizer,
                        exp.controls,
                        epoch,
                        bar,
                        tracker=exp.tracker,
                    )
                )
            step += len(exp.loader)
            if exp.controls.guard is not None:  # before anything of the epoch is evaluated or saved
                world, reduce = (exp.dist.world_size, all_reduce_sum) if exp.dist else (1, None)
                exp.controls.guard.check(epoch + 1, world, reduce)
            iterations = exp.tracker.flush() if exp.tracker is not None else []
            # Inside the epoch's work, before its checkpoint: a resumed run continues from the
            # clipped weights, exactly as an uninterrupted one.
            metrics.update(_spectral_clip(exp, epoch))
            metrics.update(_epoch_diagnostics(exp, epoch, show_progress))
            metrics["time_s"] = time.perf_counter() - epoch_start
            metrics = _ordered(metrics)
            history.append(metrics)
            # Every rank's random state, for an exact resume (a collective: all ranks call it).
            rng_ranks = (
                distributed.gather_objects(capture_rng_state(exp.device))
                if exp.dist is not None
                else None
            )
            if main:
                # Before the checkpoint: if it is not written, a resume drops these and redoes them.
                run.append_iterations(iterations)
                best = _save_epoch(exp, run, epoch, step, metrics, history, best, rng_ranks)
            # A checkpoint exists now, and a rollback reloads it: the copy of the first state
            # (a second model and optimizer on the device) is no longer needed.
            exp.initial_state = None
            if store is not None:
                store.record_epoch(run_id, epoch + 1, metrics, iterations)  # one transaction
            if on_epoch is not None:
                on_epoch(metrics)
            if loggers is not None:  # after the store: a dashboard never runs ahead of the record
                loggers.log_epoch(metrics, iterations)
            if exp.dist is not None:  # no rank starts the next epoch before the checkpoint exists
                distributed.barrier()
    finally:
        if loggers is not None:
            loggers.close()
    stopped = exp.method.stop_requested
    if not main:  # rank 0 runs the final evaluation and records the end of the run
        return FitResult(run_id, run.path, history, best)
    selection = (
        final_selection(exp, run, store, run_id, show_progress)
        if config.eval.final and history
        else {}
    )
    info = run.read_info()
    wall = info.get("wall_time_s", 0.0) + (time.perf_counter() - wall_start)
    run.update_info(
        status="finished",
        wall_time_s=wall,
        best_epoch=best["epoch"] if best else None,
        stopped_early=stopped,
        selection=selection,
    )
    if store is not None:
        summary = {
            "final": history[-1] if history else {},
            "best": best,
            "selection": selection,
            "stopped_early": stopped,
        }
        store.finish_run(run_id, "finished", summary)
    return FitResult(run_id, run.path, history, best, selection)


def _open_loggers(
    exp: Experiment,
    run: RunDirectory,
    run_id: str,
    history: list[dict[str, Any]],
    recorded: list[dict[str, Any]],
    step: int,
) -> LoggerGroup | None:
    """The run's live loggers (``train.loggers``), None when there are none; a resumed run's
    (``history``: its epochs so far, ``recorded``: its iteration records, ``step``: its
    iterations) is told what it has done."""
    names = exp.config.train.loggers
    if not names:
        return None
    context = LoggerContext(run.path.resolve(), run_id, exp.config.to_dict(), len(history), step)
    loggers = open_loggers(names, context)
    if context.resumed:
        loggers.resume(history, recorded)
    return loggers


def _save_epoch(
    exp: Experiment,
    run: RunDirectory,
    epoch: int,
    step: int,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    rng_ranks: list[dict[str, Any]] | None,
) -> dict[str, Any] | None:
    """The epoch's checkpoints (best if improved, PAS snapshot at a period end, last) then its
    line in ``metrics.jsonl``; returns the best epoch's metrics."""
    metric = exp.config.eval.select
    if improves(metric, metrics.get(metric), best):
        best = metrics
        save_checkpoint(run.best_checkpoint, _model_state(exp, epoch + 1, metrics))
    snapshot_epochs = exp.controls.clock.period_ends()
    if epoch + 1 in snapshot_epochs:
        save_checkpoint(
            run.snapshot_checkpoint(snapshot_epochs.index(epoch + 1) + 1),
            _model_state(exp, epoch + 1, metrics),
        )
    if epoch + 1 in exp.config.train.save_epochs:
        save_checkpoint(run.epoch_checkpoint(epoch + 1), _model_state(exp, epoch + 1, metrics))
    save_checkpoint(
        run.last_checkpoint,
        _state(exp, epoch + 1, step, history, best, rng_ranks),
        keep_previous=True,
    )
    run.append_metrics(metrics)
    return best


def final_selection(
    exp: Experiment, run: RunDirectory, store: ResultsStore | None, run_id: str, show_progress: bool
) -> dict[str, Any]:
    """Model selection as in the literature: the last model, the best by ``eval.select``
    (validation robust accuracy by default), and for PAS the snapshot ensemble, each evaluated
    on the whole test set under the evaluation attack (and stored as evaluations of the run).

    Each evaluation is seeded with ``seed``, as ``robustlab eval RUN --seed SEED`` seeds its
    own, so the two give the same number for the same weights and attack; each entry carries
    its ``label`` (``last@30 pgd-20 Linf ε=0.2 test``).
    """
    config = exp.config
    settings = attack_settings({"pgd": exp.eval_attack})
    candidates = ["last"]
    if run.best_checkpoint.exists():
        candidates.append("best")
    if exp.controls.clock.period_ends() and run.snapshot_checkpoints():
        candidates.append("ensemble")
    selection: dict[str, Any] = {}
    for which in candidates:
        model, state = load_trained_model(run, which, exp.device)
        batches = -(-len(exp.data.test_y) // config.eval.batch_size)
        seed_everything(config.seed)
        with Progress(batches, f"final {which}", enabled=show_progress) as bar:
            result = evaluate_robustness(
                model,
                exp.data.test_x,
                exp.data.test_y,
                exp.eval_attack,
                batch_size=config.eval.batch_size,
                stability_labels=config.eval.stability_labels,
                progress=bar,
            )
        source = f"{which}@{state['epoch']}"
        summary = {k: v for k, v in result.summary().items() if k in SELECTION_KEYS}
        summary["epoch"] = state["epoch"]
        summary["label"] = evaluation_label(source, settings, config.eval.norm, config.eval.eps)
        selection[which] = summary
        if store is not None:
            measured = {
                "attack_settings": settings,
                "split": "test",
                "seed": config.seed,
                "stability_labels": config.eval.stability_labels,
            }
            store.add_evaluation(
                run_id,
                source,
                "pgd",
                config.eval.norm,
                config.eval.eps,
                {**result.summary(), **measured},
            )
    return selection


SELECTION_KEYS = (
    "natural_accuracy",
    "robust_accuracy",
    "perturbation_stability",
    "natural_loss",
    "robust_loss",
    "n",
    "seconds",
)


def _ordered(metrics: dict[str, Any]) -> dict[str, Any]:
    ordered = {k: metrics[k] for k in METRIC_ORDER if k in metrics}
    ordered.update({k: v for k, v in metrics.items() if k not in ordered})
    return ordered


def load_trained_model(
    run: RunDirectory, which: str = "last", device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """A run's ``last``, ``best`` or (PAS) ``ensemble`` model, in eval mode, and its checkpoint
    (for the ensemble: the last snapshot's)."""
    choices = ("last", "best", "ensemble")
    if which not in choices:
        raise ConfigError("--checkpoint", which, f"one of {', '.join(choices)}")
    if which == "ensemble":
        paths = run.snapshot_checkpoints()
        if not paths:
            raise CheckpointError(
                f"run {str(run.path)!r} has no PAS snapshots (train.periods was empty or no period ended yet)"
            )
        members, state = [], {}
        for path in paths:
            member, state = _load_model_file(path, device)
            members.append(member)
        return SnapshotEnsemble(members).eval(), state
    path = run.last_checkpoint if which == "last" else run.best_checkpoint
    if not path.exists():
        raise CheckpointError(
            f"run {str(run.path)!r} has no {which} checkpoint yet ({path.name} missing)"
        )
    return _load_model_file(path, device)


def _load_model_file(path: Path, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's model on ``device``, and the checkpoint itself, kept on the CPU.

    A last checkpoint also holds the optimizer's state (one or two more copies of the weights),
    the method's and the RNG states: read all of it onto the CPU and move only the weights.
    """
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, state
