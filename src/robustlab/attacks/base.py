"""The attack interface: ``attack(model, x, y) -> x_adv``, configured in the constructor."""

from __future__ import annotations

import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import AttackInputError, ConfigError
from ..registry import Registry
from .functional import THREAT_MODELS, ThreatModel, threat_model

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack", "attack")

MODEL_MODES = ("eval", "train")


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` (``"eval"`` or ``"train"``) and restore every module's own flag after.

    Restoring per module (not one ``model.train(flag)``) keeps deliberately mixed states intact,
    e.g. a frozen batch-norm layer left in eval mode inside a model in train mode.
    """
    previous = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, training in previous:
            module.training = training


class Attack(ABC):
    """Base class of every attack.

    Subclasses implement :meth:`perturb` (the paper's loop); this class validates the inputs,
    sets the model's mode for the duration of the attack and restores it after, and returns a
    detached result. Gradients are taken with :func:`torch.autograd.grad` with respect to the
    input only, so the model's parameter ``.grad`` fields are never touched.

    Args:
        eps: radius of the threat model's ball (images live in [0, 1]).
        norm: ``"Linf"`` or ``"L2"``.
        model_mode: mode of the model while the attack runs: ``"eval"`` (evaluation, and the
            default for training attacks) or ``"train"`` (batch norm uses batch statistics and
            updates its running averages, as some training codebases do).
        check_inputs: verify images are in [0, 1] and labels in range (one host sync per call).
    """

    #: The registry name (set by :func:`create_attack`; the class name for direct construction).
    name: str = ""

    def __init__(
        self, eps: float, norm: str = "Linf", model_mode: str = "eval", check_inputs: bool = True
    ) -> None:
        self.name = self.name or type(self).__name__.lower()
        self.info: dict[str, Any] = {}
        if eps < 0:
            raise ConfigError("eps", eps, "must be >= 0")
        if norm not in THREAT_MODELS:
            raise ConfigError("norm", norm, f"one of {', '.join(THREAT_MODELS.names())}")
        if model_mode not in MODEL_MODES:
            raise ConfigError("model_mode", model_mode, f"one of {', '.join(MODEL_MODES)}")
        self.eps = float(eps)
        self.norm = norm
        self.ball: ThreatModel = threat_model(norm)
        self.model_mode = model_mode
        self.check_inputs = check_inputs

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``: same shape as ``x``, within the ball, in [0, 1].

        After the call, :attr:`info` holds what the attack reports besides ``x_adv`` (e.g.
        ``"queries"``, the per-example query counts of a black-box attack).
        """
        self.info: dict[str, Any] = {}
        if self.check_inputs:
            _check_inputs(x, y)
        y = y.long()  # any integer dtype is accepted; the losses take int64 targets
        if x.shape[0] == 0:
            # An empty batch (a library caller's filtered selection, say) has nothing to
            # perturb: returned as is, as torch's layers accept empty batches.
            return x.detach().clone()
        attacked = _FirstOutputCheck(model, x.shape[0], y) if self.check_inputs else model
        with model_mode(model, self.model_mode):
            x_adv = self.perturb(attacked, x.detach(), y.detach())
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack's algorithm; the model is already in the attack's mode."""

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}"
            for k, v in vars(self).items()
            if not callable(v) and k not in ("ball", "info", "name")
        )
        return f"{type(self).__name__}({fields})"


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise AttackInputError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise AttackInputError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    check_unit_range(x)
    check_labels(y)


# The integer dtypes accepted as labels (the losses take them as int64).
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_unit_range(x: torch.Tensor) -> None:
    """Raise :class:`AttackInputError` unless every value of ``x`` lies in [0, 1] (NaN fails);
    one host read. Attacks are defined on the image box only."""
    if x.numel() == 0:
        return  # nothing to check (aminmax has no identity over an empty tensor)
    low, high = torch.aminmax(x)
    if not (low >= 0 and high <= 1):  # written so that NaN fails too
        raise AttackInputError(
            f"images must lie in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}]"
        )


def check_labels(y: torch.Tensor) -> None:
    """Raise :class:`AttackInputError` unless ``y`` holds integers >= 0."""
    if y.dtype not in LABEL_DTYPES:
        raise AttackInputError(f"labels must be integers, got dtype {y.dtype}")
    if y.numel() and y.min() < 0:
        raise AttackInputError(f"labels must be >= 0, got {y.min().item()}")


def register_preset(name: str, cls: type[Attack], doc: str, **fixed: Any) -> Callable[..., Attack]:
    """Register ``name`` as ``cls`` with some arguments ``fixed`` (``apgd-ce`` is APGD with
    ``loss="ce"``): the preset takes every other argument of ``cls``, with the same defaults."""
    signature = inspect.signature(cls)
    hints = typing.get_type_hints(cls.__init__)

    def factory(**kwargs: Any) -> Attack:
        return cls(**fixed, **kwargs)

    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in fixed],
        return_annotation=cls,
    )
    factory.__annotations__ = {k: v for k, v in hints.items() if k not in fixed}
    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = doc
    return ATTACKS.register(name)(factory)


class _FirstOutputCheck(nn.Module):
    """``model`` with a check of its first output: logits of shape (B, classes), labels < classes.

    A wrapper around the calls rather than a forward hook: TorchScript modules
    (``torch.jit.script``) do not support ``register_forward_hook``, and the attacks only ever
    call the model. The check rides on the attack's own first forward pass (no extra pass), and
    later calls cost one flag test. The wrapped model's train/eval flags are set by
    :func:`model_mode` on the model itself, not through this wrapper.
    """

    def __init__(self, model: nn.Module, batch: int, y: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.batch = batch
        self.labels = y
        self.checked = False

    def forward(self, x: torch.Tensor) -> Any:
        output = self.model(x)
        if not self.checked:
            self.checked = True
            validate_logits(output, self.batch, self.labels)
        return output


def validate_logits(logits: Any, batch: int, y: torch.Tensor | None = None) -> int:
    """Raise :class:`AttackInputError` unless ``logits`` is (batch, classes) and labels are in range.

    Returns the number of classes.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AttackInputError(
            f"the model must return logits of shape ({batch}, classes), got {shape}"
        )
    classes = logits.shape[1]
    if y is not None and y.numel() and int(y.max()) >= classes:
        raise AttackInputError(
            f"labels must be < {classes} (the model's number of outputs), got {int(y.max())}"
        )
    return classes


def input_gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eot_iter: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of ``sum(loss_fn(model(x_adv), y))`` with respect to ``x_adv``, the logits and the
    per-example loss.

    With ``eot_iter > 1`` (Expectation over Transformation, Athalye et al. 2018) the gradient,
    logits and loss are averaged over that many forward/backward passes, for randomized models.
    Only the input's gradient is computed: autograd skips the weight gradients, and parameters'
    ``.grad`` stay as they were.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    grad = logits_sum = loss_sum = None
    for _ in range(eot_iter):
        logits = model(x_adv)
        loss = loss_fn(logits, y)
        (g,) = torch.autograd.grad(loss.sum(), x_adv)
        if grad is None:
            grad, logits_sum, loss_sum = g, logits.detach(), loss.detach()
        else:
            grad, logits_sum, loss_sum = (
                grad + g,
                logits_sum + logits.detach(),
                loss_sum + loss.detach(),
            )
    if eot_iter > 1:
        grad, logits_sum, loss_sum = grad / eot_iter, logits_sum / eot_iter, loss_sum / eot_iter
    return grad, logits_sum, loss_sum
