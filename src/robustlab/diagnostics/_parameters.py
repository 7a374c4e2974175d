"""Parameter-space machinery of the curvature and landscape measurements.

``hessian``, ``landscape``, ``perturbation_similarity`` and ``connectivity`` look at the loss as
a function of the weights θ rather than of the input. They share:

* :class:`ParameterSpace`: which parameters are the variables, and the conversion between
  them and one flat vector (Hessian-vector products, directions and dot products all work on
  flat vectors: one kernel per operation instead of one per parameter tensor);
* :class:`AtParameters`: the model evaluated at other weights (θ + a·d, a point of a curve)
  through :func:`torch.func.functional_call`, so the caller's model is never modified and an
  attack can run against those weights like against any model;
* random directions: Gaussian unit vectors (Liu et al. 2020, §4.2) and filter-normalized ones
  (Li et al. 2018, §4);
* :func:`seeded`: the same attack randomness at several weights, without disturbing the
  caller's random streams;
* :func:`loss_and_error`: a loss and an error rate, natural or under an attack, over points in
  batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..attacks import Attack, model_mode
from ..errors import ConfigError
from ._base import as_float, batch_slices

# The objectives a parameter-space measurement can look at: the natural training loss
# E CE(f_θ(x), y), or Liu et al.'s adversarial loss L_ε(θ) = E max_δ CE(f_θ(x + δ), y) (eq. 1),
# the maximum approximated by an attack.
OBJECTIVES = ("auto", "natural", "adversarial")


def resolve_objective(objective: str, attack: Attack | None) -> str:
    """``"auto"`` is adversarial when an attack is given, natural otherwise.

    Raises:
        ConfigError: an unknown objective, or ``"adversarial"`` without an attack.
    """
    if objective not in OBJECTIVES:
        raise ConfigError("objective", objective, f"one of {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return "adversarial" if attack is not None else "natural"
    if objective == "adversarial" and attack is None:
        raise ConfigError(
            "objective", objective, "the adversarial loss needs an attack (pass attack=...)"
        )
    return objective


class ParameterSpace:
    """The parameters a measurement treats as variables, and their flat-vector form.

    The variables are the parameters that require gradients; a model frozen for evaluation
    (no parameter requires them) is still a function of all its weights, so then all of them.
    Shared (tied) parameters appear once, as in :meth:`torch.nn.Module.named_parameters`.

    Attributes:
        names, params: the variables, in the model's order.
        size: their number of scalars (the dimension of the space).
    """

    def __init__(self, model: nn.Module, all_parameters: bool = False) -> None:
        named = list(model.named_parameters())
        chosen = named if all_parameters else [(n, p) for n, p in named if p.requires_grad]
        chosen = chosen or named
        if not chosen:
            raise ConfigError("model", type(model).__name__, "the model has no parameters")
        self.names = [n for n, _ in chosen]
        self.params = [p for _, p in chosen]
        self.numels = [p.numel() for p in self.params]
        self.size = sum(self.numels)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype

    def flat(self) -> torch.Tensor:
        """θ as one detached flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``vector`` shaped like each parameter (no copy)."""
        parts = vector.split(self.numels)
        return [part.view(p.shape) for part, p in zip(parts, self.params, strict=True)]

    def as_dict(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` for :func:`torch.func.functional_call` (views of ``vector``)."""
        return dict(zip(self.names, self.split(vector), strict=True))

    def concat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """One flat vector from per-parameter tensors; ``None`` (no gradient) counts as zeros."""
        return torch.cat(
            [
                torch.zeros(n, device=self.device, dtype=self.dtype) if t is None else t.reshape(-1)
                for t, n in zip(tensors, self.numels, strict=True)
            ]
        )

    def random_unit(self, generator: torch.Generator) -> torch.Tensor:
        """A Gaussian direction of unit Euclidean norm over all variables (Liu et al. 2020, §4.2:
        "v is a random unit vector")."""
        d = torch.randn(self.size, device=self.device, dtype=self.dtype, generator=generator)
        return d / d.norm()

    def filter_normalized(self, generator: torch.Generator) -> torch.Tensor:
        """A Gaussian direction with each filter rescaled to the norm of θ's filter.

        Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets"
        (NeurIPS 2018), §4, eq. (1): d_{i,j} ← d_{i,j} / ||d_{i,j}|| · ||θ_{i,j}||, a filter being
        one slice along the output dimension of a weight; 1-D parameters (biases, batch-norm
        scales and shifts) get no direction ("biasbn" ignored, the reference's default), so
        a coordinate of 1 moves every filter by its own norm.
        """
        parts = []
        for p in self.params:
            if p.dim() <= 1:
                parts.append(torch.zeros(p.numel(), device=self.device, dtype=self.dtype))
                continue
            d = torch.randn(p.shape, device=self.device, dtype=self.dtype, generator=generator)
            rows, weight = d.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            scale = weight.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10)
            parts.append((rows * scale).reshape(-1))
        return torch.cat(parts)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` (random vectors are drawn where they live)."""
    return torch.Generator(device=device).manual_seed(int(seed))


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNGs seeded with ``seed``, restoring them after.

    Attacks draw their random starts from the global streams; seeding them identically before
    attacking at two weights gives both attacks the same start (Liu et al.'s θ ± a·v), and the
    caller's streams continue as if nothing had been drawn.
    """
    # The two generators involved, directly: torch.manual_seed also queues a lazy seeding of
    # every CUDA device, recording a stack trace each time (milliseconds per attack call).
    generators = [torch.default_generator]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        generators.append(torch.cuda.default_generators[index])
    states = [g.get_state() for g in generators]
    for g in generators:
        g.manual_seed(int(seed))
    try:
        yield
    finally:
        for g, state in zip(generators, states, strict=True):
            g.set_state(state)


class AtParameters(nn.Module):
    """``model`` with some parameters (and buffers) replaced: f(x; θ') for a θ' of our own.

    A module, so that an attack can run against it (the base class sets its mode, which reaches
    the wrapped model, a submodule). Entries not in ``tensors`` are the model's own.
    """

    def __init__(self, model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.tensors = dict(tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, torch.jit.ScriptModule):
            return _scripted_call(self.model, self.tensors, x)
        return functional_call(self.model, self.tensors, (x,))


def _scripted_call(
    model: torch.jit.ScriptModule, tensors: Mapping[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``functional_call`` for a TorchScript model, which torch.func refuses: the tensors are
    set as the attributes of its C++ modules for the call (gradients flow through them, as
    through functional_call's) and the model's own are put back after."""
    saved = []
    try:
        for name, tensor in tensors.items():
            path, _, attribute = name.rpartition(".")
            owner = model._c
            for part in path.split(".") if path else ():
                owner = owner.getattr(part)
            saved.append((owner, attribute, owner.getattr(attribute)))
            owner.setattr(attribute, tensor)
        return model(x)
    finally:
        for owner, attribute, value in reversed(saved):
            owner.setattr(attribute, value)


@dataclass
class LossError:
    """Mean cross-entropy and error rate (a fraction) over points."""

    loss: float
    error: float


def loss_and_error(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: Attack | None = None,
    batch_size: int = 512,
    seed: int | None = None,
) -> LossError:
    """CE and error of ``model`` (in eval mode) on ``(x, y)``, or on the attack's examples.

    With ``seed``, each batch's attack draws its randomness from ``seed + batch index``, so the
    same points attacked at different weights start from the same random points.
    """
    device = next(iter(model.parameters())).device
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.float64)
    with model_mode(model, "eval"):
        for index, part in enumerate(batch_slices(len(y), batch_size)):
            xb, yb = as_float(x[part]).to(device), y[part].to(device)
            if attack is not None:
                if seed is None:
                    xb = attack(model, xb, yb)
                else:
                    with seeded(seed + index, device):
                        xb = attack(model, xb, yb)
            with torch.no_grad():
                logits = full_precision(model(xb))
                total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
                wrong += (logits.argmax(1) != yb).sum()
    n = max(len(y), 1)
    return LossError(float(total_loss) / n, float(wrong) / n)


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (a model under autocast) in fp32; fp32 and fp64 as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def check_grid(key: str, values: Sequence[float]) -> list[float]:
    """A non-empty list of finite numbers, else :class:`ConfigError` naming ``key``."""
    grid = [float(v) for v in values]
    if not grid:
        raise ConfigError(key, list(values), "a grid with no points; give at least one value")
    if not all(torch.isfinite(torch.tensor(grid))):
        raise ConfigError(key, grid, "finite numbers only")
    return grid
