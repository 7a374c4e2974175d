"""How the robust-regularization strength λ evolves during training (``method.lam_schedule``).

λ is kept as a tensor on the training device and updated with tensor ops, so a schedule that
adapts λ every iteration (WAR) adds no host-device synchronization to the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Registry

LAMBDA_SCHEDULES: Registry[Callable[..., LambdaSchedule]] = Registry(
    "lambda schedule", "method.lam_schedule"
)
# The per-iteration trajectory of λ is kept every this many iterations (and the epoch's last).
TRACE_EVERY = 10


class LambdaSchedule:
    """Base: λ constant at its starting value."""

    def __init__(self) -> None:
        self.value: torch.Tensor = torch.tensor(0.0)
        self.iteration = 0
        self.trace: list[torch.Tensor] = []

    def reset(self, start: float) -> None:
        self.value = torch.tensor(float(start))
        self.iteration = 0
        self.trace = []

    def step(self, nat_risk: torch.Tensor, rob_reg: torch.Tensor) -> torch.Tensor:
        """λ_t for this iteration's update, from this batch's terms."""
        if self.value.device != rob_reg.device:
            self.value = self.value.to(rob_reg.device)
        self.value = self._next(nat_risk, rob_reg)
        if self.iteration % TRACE_EVERY == 0:
            self.trace.append(self.value.detach().clone())
        self.iteration += 1
        return self.value

    def _next(self, nat_risk: torch.Tensor, rob_reg: torch.Tensor) -> torch.Tensor:
        return self.value

    def take_trace(self) -> list[float]:
        """The sampled λ values since the last call (one host read per epoch)."""
        values = (
            torch.stack([*self.trace, self.value.detach().reshape(())]).tolist()
            if self.trace
            else [float(self.value)]
        )
        self.trace = []
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"value": float(self.value), "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = torch.tensor(state["value"])
        self.iteration = state["iteration"]


@LAMBDA_SCHEDULES.register("constant")
class ConstantLambda(LambdaSchedule):
    """λ stays at ``method.lam`` (or the method's published default)."""


@LAMBDA_SCHEDULES.register("war")
class WidthAdjustedLambda(LambdaSchedule):
    """Width Adjusted Regularization, Wu et al. 2021, Algorithm 1 (section 5.4):
    ``λ_t = max(λ_{t-1} + α·(ζ − l_nat / l_rob), 0)`` every iteration, with the batch's natural
    risk l_nat and robust regularization l_rob, before the weight update that uses λ_t.

    ζ is the ratio l_nat / l_rob a thin model trained with its best λ reaches at convergence
    (``robustlab calibrate-war RUN_DIR`` reads it from such a run); α = 0.1 and λ_0 = 0 are the
    paper's defaults ("the learning rate α for λ_t is not sensitive and needs no extra tuning").
    A batch with l_rob = 0 gives an infinite ratio, which drives λ to 0 as the recurrence says.

    Args:
        zeta: the target ratio ζ (> 0).
        alpha: the step α (default 0.1).
    """

    def __init__(self, zeta: float, alpha: float = 0.1) -> None:
        super().__init__()
        if zeta is None or zeta <= 0:
            raise ConfigError(
                "method.zeta",
                zeta,
                "WAR needs a ratio ζ > 0 (from `robustlab calibrate-war RUN_DIR`)",
            )
        if alpha <= 0:
            raise ConfigError("method.war_alpha", alpha, "must be > 0")
        self.zeta, self.alpha = float(zeta), float(alpha)

    def _next(self, nat_risk: torch.Tensor, rob_reg: torch.Tensor) -> torch.Tensor:
        ratio = nat_risk / rob_reg.clamp_min(1e-12)
        return (self.value + self.alpha * (self.zeta - ratio)).clamp_min(0.0)


def create_lambda_schedule(
    name: str, zeta: float | None = None, alpha: float = 0.1
) -> LambdaSchedule:
    """The λ schedule ``name`` (``constant`` or ``war``)."""
    factory = LAMBDA_SCHEDULES.get(name)
    return factory() if name == "constant" else factory(zeta=zeta, alpha=alpha)
