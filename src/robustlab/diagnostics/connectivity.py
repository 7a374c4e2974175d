"""Mode connectivity: a Bezier curve of low loss between two trained models (Garipov et al.)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack, model_mode
from ..errors import ConfigError
from ..models._base import shape_mismatches
from ._base import DIAGNOSTICS, DiagnosticResult, as_float, batch_slices
from ._parameters import (
    AtParameters,
    ParameterSpace,
    generator_for,
    loss_and_error,
    resolve_objective,
    seeded,
)
from ._plot import new_figure, save

ORDERS = (2, 3, 4)
# The curve's SGD. The reference trains curves for as many epochs as the endpoints (200-600 on
# CIFAR) at about a third of the endpoints' learning rate (0.015 for VGG16, 0.03 for ResNets);
# 40 epochs at 0.03 is that rate on the small datasets here. Between two digits MLPs (width 32)
# the midpoint's training loss is then 1/6 of the line's; after 10 epochs at 0.01, 0.6 of it.
DEFAULT_EPOCHS = 40
DEFAULT_LR = 0.03
# The metrics reported at each t, per split; the robust ones need an attack.
METRICS = ("nat_loss", "nat_error", "rob_loss", "rob_error")


def bezier_coefficients(t: torch.Tensor, order: int) -> torch.Tensor:
    """The Bernstein weights C(n, j) tʲ (1 − t)ⁿ⁻ʲ, j = 0..n (Garipov et al. 2018, §3.2;
    Liu et al. 2020, App. C.2.5, eq. 30). At t = 0 and t = 1 they are exactly one-hot."""
    j = torch.arange(order + 1, dtype=t.dtype, device=t.device)
    binom = torch.tensor([math.comb(order, i) for i in range(order + 1)], dtype=t.dtype)
    return binom.to(t.device) * t.pow(j) * (1 - t).pow(order - j)


class BezierCurve(nn.Module):
    """θ(t) = Σⱼ C(n, j) tʲ (1 − t)ⁿ⁻ʲ θⱼ with fixed ends θ₀, θₙ and trainable bends θ₁..θₙ₋₁.

    The bends start on the straight line between the ends (θⱼ = (1 − j/n) θ₀ + (j/n) θₙ, the
    reference's ``init_linear``), so before training the curve is the line. Order 1 is the line.
    """

    def __init__(self, start: torch.Tensor, end: torch.Tensor, order: int) -> None:
        super().__init__()
        self.order = order
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("end", end.detach().clone())
        bends = [(1 - j / order) * start + (j / order) * end for j in range(1, order)]
        stacked = torch.stack(bends) if bends else start.new_zeros(0, start.numel())
        self.bends = nn.Parameter(stacked.detach().clone())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """The flat parameters at ``t`` (a 0-d tensor in [0, 1])."""
        c = bezier_coefficients(t.to(self.start.dtype), self.order)
        point = c[0] * self.start + c[-1] * self.end
        if self.order > 1:
            point = point + c[1:-1] @ self.bends
        return point


def _batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


@contextmanager
def _momenta(norms: list[nn.Module]) -> Iterator[None]:
    saved = [m.momentum for m in norms]
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def reestimate_batch_norm(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Fresh batch-norm statistics for the weights ``params``, from one pass over ``x``.

    As the reference's ``update_bn`` (Garipov et al. 2018, ``utils.py``): statistics reset,
    then each batch averaged in with momentum b / (seen + b), so the result is the mean over all
    points of the per-batch statistics; the model's own buffers and momenta are left as they
    were (the statistics live in new tensors passed through ``functional_call``).

    Returns:
        ``{buffer name: tensor}`` for every batch-norm layer (empty if there is none).
    """
    norms = _batch_norms(model)
    if not norms:
        return {}
    buffers: dict[str, torch.Tensor] = {}
    for name, m in norms.items():
        prefix = f"{name}." if name else ""
        buffers[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
        buffers[prefix + "running_var"] = torch.ones_like(m.running_var)
        buffers[prefix + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
    moved = AtParameters(model, {**params, **buffers})
    device = next(iter(buffers.values())).device
    seen = 0
    with _momenta(list(norms.values())), model_mode(moved, "train"), torch.no_grad():
        for part in batch_slices(len(x), batch_size):
            xb = as_float(x[part]).to(device)
            for m in norms.values():
                m.momentum = len(xb) / (seen + len(xb))
            moved(xb)
            seen += len(xb)
    return buffers


def check_same_architecture(model: nn.Module, other: nn.Module) -> None:
    """ConfigError (one line) unless ``other`` has ``model``'s module type, state names and
    shapes: a path in parameter space needs both ends in one space."""
    ours, theirs = model.state_dict(), other.state_dict()

    def describe(m: nn.Module) -> str:
        count = sum(p.numel() for p in m.parameters())
        return f"{type(m).__name__} with {count:,} parameters"

    mismatch = shape_mismatches(ours, theirs)
    one_sided = sorted(name for name, shapes in mismatch.items() if None in shapes)
    problem = None
    if type(model) is not type(other):
        problem = f"a {type(other).__name__}, not a {type(model).__name__}"
    elif one_sided:
        problem = f"its layers differ (e.g. {one_sided[0]!r} is in one model only)"
    elif mismatch:
        name, (their_shape, our_shape) = next(iter(mismatch.items()))
        problem = f"{name!r} has shape {their_shape} there and {our_shape} here"
    if problem is not None:
        raise ConfigError(
            "other",
            describe(other),
            f"not the architecture of the model ({describe(model)}): {problem}; "
            "connectivity needs two models of one architecture",
        )


def check_batch_norm(model: nn.Module) -> None:
    """ConfigError for a TorchScript model with batch norm: its momentum is a compiled
    constant, so its statistics cannot be re-estimated at the curve's points (and measuring
    with the end's statistics would be wrong)."""
    if not isinstance(model, torch.jit.ScriptModule):
        return
    scripted = [
        name
        for name, m in model.named_modules()
        if "BatchNorm" in str(getattr(m, "original_name", ""))
    ]
    if scripted:
        raise ConfigError(
            "model",
            f"TorchScript with batch norm ({scripted[0]!r})",
            "its batch-norm statistics cannot be re-estimated along the curve; give the model "
            "as a checkpoint or module:function",
        )


def check_path(order: int, points: int) -> None:
    """ConfigError unless ``order`` is a curve degree (2–4) and ``points`` at least the ends."""
    if order not in ORDERS:
        raise ConfigError("order", order, "2 (quadratic), 3 or 4")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ConfigError("points", points, "at least 2 values of t (the two ends)")


@dataclass(repr=False)
class ConnectivityResult(DiagnosticResult):
    """Loss and error along the trained Bezier curve and along the straight line.

    Attributes:
        t: the evaluated points of [0, 1] (61 by default, as Garipov et al.).
        curve, line: ``{metric: values along t}`` with metrics ``<split>_<nat|rob>_<loss|error>``
            (splits ``train`` and ``test``; errors are fractions; robust ones need an attack).
        order: the curve's degree; ``objective``: the loss it was trained on.
        epochs, train_losses: the curve's training epochs and mean loss per epoch.
        attack: the attack's name (robust metrics and adversarial training), or ``None``.
        n_train, n_test: the points.
        middle_state: a ``state_dict`` of the curve's point at t = 0.5 (batch-norm statistics
            re-estimated there), on the CPU: loadable into the model, savable as a checkpoint.
    """

    t: list[float]
    curve: dict[str, list[float]]
    line: dict[str, list[float]]
    order: int
    objective: str
    epochs: int
    train_losses: list[float]
    attack: str | None
    n_train: int
    n_test: int
    seconds: float
    middle_state: dict[str, torch.Tensor] | None = field(default=None)

    def maxima(self, path: str) -> dict[str, float]:
        """The largest value of each metric along ``"curve"`` or ``"line"``."""
        values = self.curve if path == "curve" else self.line
        return {metric: max(series) for metric, series in values.items()}

    def summary(self) -> dict[str, Any]:
        return {
            "t": list(self.t),
            "curve": {k: list(v) for k, v in self.curve.items()},
            "line": {k: list(v) for k, v in self.line.items()},
            "curve_max": self.maxima("curve"),
            "line_max": self.maxima("line"),
            "order": self.order,
            "objective": self.objective,
            "epochs": self.epochs,
            "train_losses": list(self.train_losses),
            "attack": self.attack,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seconds": self.seconds,
        }


def plot_connectivity(result: ConnectivityResult, path: str | Path) -> Path | None:
    """Training loss and test error along t, the curve (solid) against the straight line
    (dashed), as Garipov et al. 2018, Fig. 2 and Liu et al. 2020, Fig. 15, to ``path`` (PNG).

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = new_figure(ncols=2, size=(10.0, 4.0))
    if drawn is None:
        return None
    figure, (loss_axis, error_axis) = drawn
    kind = "rob" if result.objective == "adversarial" else "nat"
    for values, style, name in ((result.curve, "-", "Bezier curve"), (result.line, "--", "line")):
        loss_axis.plot(
            result.t, values[f"train_{kind}_loss"], linestyle=style, color="tab:blue", label=name
        )
        for metric, colour, label in (
            ("test_nat_error", "tab:blue", "natural"),
            ("test_rob_error", "tab:red", f"robust ({result.attack})"),
        ):
            if metric in values:
                error_axis.plot(
                    result.t,
                    [100 * v for v in values[metric]],
                    linestyle=style,
                    color=colour,
                    label=f"{label}, {name}",
                )
    loss_axis.set_ylabel(
        f"training loss, {'adversarial' if kind == 'rob' else 'natural'} (cross-entropy)"
    )
    error_axis.set_ylabel("test error (%)")
    for axis in (loss_axis, error_axis):
        axis.set_xlabel("t (0: the model, 1: the other model)")
        axis.legend(fontsize=8)
    figure.suptitle(
        f"Connectivity: order-{result.order} Bezier curve trained on the {result.objective} "
        f"loss vs the straight line (n = {result.n_train} train, {result.n_test} test)"
    )
    return save(figure, path)


def _garipov_lr(base: float, epoch: int, epochs: int) -> float:
    """The reference's schedule (``train.py``): constant for the first half, then linearly
    down to 1% by 90% of the epochs, then 1% (``epoch`` counts from 1)."""
    alpha = epoch / epochs
    if alpha <= 0.5:
        return base
    if alpha <= 0.9:
        return base * (1.0 - (alpha - 0.5) / 0.4 * 0.99)
    return base * 0.01


@DIAGNOSTICS.register(
    "connectivity",
    data="train_test",
    attack=True,
    plot=plot_connectivity,
    inputs={
        "other": {
            "kind": "model",
            "flag": "--with",
            "help": "the checkpoint the path ends at (the same architecture as the run's)",
        }
    },
)
def connectivity(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    other: nn.Module,
    attack: Attack | None = None,
    objective: str = "auto",
    order: int = 2,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    points: int = 61,
    train_attack: Attack | None = None,
    eval_batch_size: int = 512,
    seed: int = 0,
) -> ConnectivityResult:
    """Train a Bezier curve between ``model`` and ``other`` and measure loss and error along it.

    Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs" (NeurIPS), §3: the bends of θ(t) (ends fixed) minimize
    E_{t∼U[0,1]} L(θ(t)), one t drawn per batch (a Monte-Carlo gradient), with SGD under their
    schedule and weight decay ½·wd·||θ(t)||². Liu et al. 2020, App. C.2.5, Fig. 15 train it on the
    adversarial loss L_ε (order 2 on MNIST, 4 on CIFAR-10) and find adversarially trained minima
    less connected; Xing, Song & Cheng 2022, Fig. 4 connect a clean and an adversarial model
    (a quadratic curve). For the adversarial loss the training attack crafts at the current
    curve point for every batch. At each evaluated t, batch-norm statistics are re-estimated on
    the training points (Garipov et al.; Liu et al.); at t = 0 and t = 1 the two models are used
    as they are, their own statistics included, so the ends reproduce their numbers exactly.
    The straight line (1 − t)·θ₀ + t·θ₁ is measured the same way, as the baseline. No
    augmentation (Liu et al. turn it off); the models are not modified.

    Args:
        model, other: the two ends (same architecture; ``other`` is moved to ``model``'s device).
        x_train, y_train: the points the curve is trained on and batch norm is re-estimated on
            (images in [0, 1] or uint8); their loss is reported along t.
        x_test, y_test: the points whose loss and error are reported along t.
        attack: the attack of the robust metrics (and of training, unless ``train_attack``).
        objective: the training loss: ``"natural"``, ``"adversarial"`` or ``"auto"``
            (adversarial with an attack).
        order: the curve's degree, 2 (quadratic, Garipov et al.'s three bends), 3 or 4.
        epochs, lr, momentum, weight_decay, batch_size: the curve's SGD (default 40 epochs
            at lr 0.03; the reference trains CIFAR curves for 200-600 epochs at lr 0.015 (VGG16)
            or 0.03 (ResNets), momentum 0.9, wd 1e-4 to 5e-4, batch 128).
        points: evaluated values of t, evenly spaced in [0, 1] (Garipov et al.: 61).
        train_attack: the attack crafting training examples (default: ``attack``).
        eval_batch_size: points per evaluation pass.
        seed: seeds the shuffling, the draws of t and the attacks.

    Raises:
        ConfigError: ``other`` of another architecture (one line naming the difference), an
            order outside 2–4, fewer than 2 points, an adversarial objective without attack,
            or a TorchScript model with batch norm (:func:`check_batch_norm`).

    Example:
        >>> result = connectivity(model, x_tr, y_tr, x_te, y_te, other=model_b, attack=attack)
        >>> result.curve["test_rob_error"][30], result.line["test_rob_error"][30]  # t = 0.5
        >>> torch.save({"model": result.middle_state}, "middle.pt")
    """
    started = time.perf_counter()
    check_same_architecture(model, other)
    check_batch_norm(model)
    check_path(order, points)
    for key, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if value < low:
            raise ConfigError(key, value, f"must be >= {low}")
    objective = resolve_objective(objective, train_attack or attack)
    train_attack = train_attack or attack
    space = ParameterSpace(model, all_parameters=True)
    device = space.device
    other_params = dict(other.named_parameters())
    start = space.flat()
    end = torch.cat([other_params[n].detach().to(device).reshape(-1) for n in space.names])
    other_buffers = {n: b.detach().to(device) for n, b in other.named_buffers()}
    curve = BezierCurve(start, end, order)
    generator = generator_for(device, seed)
    train_losses = _train_curve(
        model, space, curve, x_train, y_train, objective, train_attack, generator,
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    line = BezierCurve(start, end, 1)
    ts = [i / (points - 1) for i in range(points)]

    def evaluate_at(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> dict:
        moved = AtParameters(model, {**params, **buffers})
        values: dict[str, float] = {}
        for split, (xs, ys) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            nat = loss_and_error(moved, xs, ys, batch_size=eval_batch_size)
            values[f"{split}_nat_loss"], values[f"{split}_nat_error"] = nat.loss, nat.error
            if attack is not None:
                rob = loss_and_error(
                    moved, xs, ys, attack=attack, batch_size=eval_batch_size, seed=seed
                )
                values[f"{split}_rob_loss"], values[f"{split}_rob_error"] = rob.loss, rob.error
        return values

    def point(path: BezierCurve, t: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return space.as_dict(path(torch.tensor(t, device=device)))

    # The ends are the two models as they are (parameters and batch-norm statistics).
    ends = {
        0.0: evaluate_at(space.as_dict(start), {}),
        1.0: evaluate_at(space.as_dict(end), other_buffers),
    }
    series: dict[str, dict[str, list[float]]] = {"curve": {}, "line": {}}
    middle_state = None
    with model_mode(model, "eval"):
        for name, path in (("curve", curve), ("line", line)):
            for t in ts:
                if t in ends:
                    values = ends[t]
                else:
                    params = point(path, t)
                    buffers = reestimate_batch_norm(model, params, x_train, eval_batch_size)
                    values = evaluate_at(params, buffers)
                    if name == "curve" and t == 0.5:
                        middle_state = _state_dict(model, params, buffers)
                for metric, value in values.items():
                    series[name].setdefault(metric, []).append(value)
        if middle_state is None:  # an even number of points misses t = 0.5
            params = point(curve, 0.5)
            middle_state = _state_dict(
                model, params, reestimate_batch_norm(model, params, x_train, eval_batch_size)
            )
    return ConnectivityResult(
        t=ts,
        curve=series["curve"],
        line=series["line"],
        order=order,
        objective=objective,
        epochs=epochs,
        train_losses=train_losses,
        attack=getattr(attack, "name", None) if attack is not None else None,
        n_train=len(y_train),
        n_test=len(y_test),
        seconds=time.perf_counter() - started,
        middle_state=middle_state,
    )


def _train_curve(
    model: nn.Module,
    space: ParameterSpace,
    curve: BezierCurve,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: str,
    attack: Attack | None,
    generator: torch.Generator,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """SGD on the bends: per batch, t ∼ U[0, 1], the loss at θ(t) plus ½·wd·||θ(t)||².

    Batch norm runs in train mode on batch statistics; its running statistics go to scratch
    tensors (they are re-estimated before any evaluation). Returns the mean loss per epoch.
    """
    if curve.order < 2:  # a line has nothing to train
        return []
    device = space.device
    optimizer = torch.optim.SGD([curve.bends], lr=lr, momentum=momentum)
    scratch = {n: b.detach().clone() for n, b in model.named_buffers()}
    losses = []
    step = 0
    for epoch in range(1, epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = _garipov_lr(lr, epoch, epochs)
        order = torch.randperm(len(y), generator=generator, device=device)
        total, seen = 0.0, 0
        for part in batch_slices(len(y), batch_size):
            index = order[part]
            xb, yb = as_float(x[index.to(x.device)]).to(device), y[index.to(y.device)].to(device)
            t = torch.rand((), generator=generator, device=device)
            point = curve(t)
            if objective == "adversarial":
                assert attack is not None
                fixed = AtParameters(model, {**space.as_dict(point.detach()), **scratch})
                with seeded(seed + step, device):
                    xb = attack(fixed, xb, yb)
            moved = AtParameters(model, {**space.as_dict(point), **scratch})
            with model_mode(moved, "train"):
                loss = F.cross_entropy(moved(xb), yb)
            regularized = loss + 0.5 * weight_decay * point.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            regularized.backward()
            optimizer.step()
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
            step += 1
        losses.append(total / max(seen, 1))
    return losses


def _state_dict(
    model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` with these parameters and buffers, on the CPU."""
    state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    replaced = {**params, **buffers}
    # state_dict lists a tied parameter under each of its names; named_parameters under one.
    for name, tensor in model.named_parameters(remove_duplicate=False):
        key = next((k for k, p in model.named_parameters() if p is tensor), name)
        if key in replaced:
            state[name] = replaced[key].detach().cpu().clone()
    for name, value in buffers.items():
        state[name] = value.detach().cpu().clone()
    return state
