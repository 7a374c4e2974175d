"""AutoAttack: an ensemble of parameter-free attacks run as a worst-case cascade."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import ATTACKS, Attack

# The versions of Croce & Hein 2020 (fra31/auto-attack, AutoAttack.set_version): the attacks in
# cascade order, each with the settings that version gives it. `steps` (APGD, FAB),
# `targets` (APGD-T, FAB-T) and `queries` (Square) come from the ensemble's arguments.
VERSIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "standard": [
        ("apgd-ce", {"restarts": 1}),
        ("apgd-t", {"restarts": 1}),
        ("fab-t", {"restarts": 1}),
        ("square", {"restarts": 1}),
    ],
    "plus": [
        ("apgd-ce", {"restarts": 5}),
        ("apgd-dlr", {"restarts": 5}),
        ("fab", {"restarts": 5}),
        ("square", {"restarts": 1}),
        ("apgd-t", {"restarts": 1}),
        ("fab-t", {"restarts": 1}),
    ],
    # Randomized defenses: gradients averaged over 20 draws (Expectation over Transformation).
    "rand": [
        ("apgd-ce", {"restarts": 1, "eot_iter": 20}),
        ("apgd-dlr", {"restarts": 1, "eot_iter": 20}),
    ],
}
ITERATIVE = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t")
TARGETED = ("apgd-t", "fab-t")


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack, Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks" (ICML 2020, https://arxiv.org/abs/2003.01690), section 4.

    The attacks run one after another; each later attack runs only on the points the earlier
    ones did not fool (the worst-case cascade), so the result is the point-wise worst case.
    ``robustlab eval`` and :func:`robustlab.evaluation.evaluate_robustness` expand the ensemble
    into its :attr:`components` and report robust accuracy after each of them.

    Versions:
        ``standard``: APGD-CE (1 restart), APGD-T (9 target classes), FAB-T (9 target classes),
        Square (5,000 queries); 100 iterations each.
        ``plus``: APGD-CE and APGD-DLR (5 restarts), FAB (5 restarts), Square, APGD-T, FAB-T.
        ``rand``: APGD-CE and APGD-DLR with 20 EOT iterations, for randomized models.
        ``custom``: the attacks named in ``attacks``, in that order, with their defaults.

    Threat model: L-inf or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` (default) or ``"L2"``.
        version: ``"standard"`` (default), ``"plus"``, ``"rand"`` or ``"custom"``.
        attacks: the registered attack names of a ``custom`` cascade.
        steps: iterations of APGD and FAB (default 100).
        queries: Square's query budget (default 5000).
        targets: target classes of APGD-T and FAB-T (default 9; at most classes - 1,
            so datasets with fewer than 10 classes need a smaller value).

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``: for each
    point, the first adversarial example found, else the last attack's output.

    Example:
        >>> attack = create_attack("autoattack", eps=8 / 255, version="standard")
        >>> result = evaluate_robustness(model, x, y, attack)  # per-attack robust accuracy
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "Linf",
        version: str = "standard",
        attacks: list[str] | None = None,
        steps: int = 100,
        queries: int = 5000,
        targets: int = 9,
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        versions = [*VERSIONS, "custom"]
        if version not in versions:
            raise ConfigError("version", version, f"one of {', '.join(versions)}")
        if (version == "custom") != bool(attacks):
            raise ConfigError(
                "attacks", attacks, "a list of attack names exactly when version='custom'"
            )
        if steps <= 0:
            raise ConfigError("steps", steps, "must be > 0")
        if queries <= 0:
            raise ConfigError("queries", queries, "must be > 0")
        if targets <= 0:
            raise ConfigError("targets", targets, "must be > 0")
        self.version, self.steps, self.queries = version, steps, queries
        self.targets = targets
        plan = VERSIONS[version] if version != "custom" else [(name, {}) for name in attacks or []]
        self.components = self._build(plan)

    def _build(self, plan: list[tuple[str, dict[str, Any]]]) -> dict[str, Attack]:
        from . import create_attack  # the registry's factory, which names the attack

        components: dict[str, Attack] = {}
        for name, settings in plan:
            if name == "autoattack":
                raise ConfigError("attacks", name, "an AutoAttack cannot contain itself")
            kwargs = dict(settings)
            if name in ITERATIVE and self.version != "custom":
                kwargs["steps"] = self.steps
            if name in TARGETED and self.version != "custom":
                kwargs["targets"] = self.targets
            if name == "square" and self.version != "custom":
                kwargs["queries"] = self.queries
            attack = create_attack(name, eps=self.eps, norm=self.norm, **kwargs)
            # Inputs were checked once by the ensemble; the components need not check them again.
            attack.check_inputs = False
            components[name if name not in components else f"{name}#{len(components)}"] = attack
        return components

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with torch.no_grad():
            robust &= model(x).argmax(dim=1) == y
        for attack in self.components.values():
            index = torch.nonzero(robust).squeeze(1)
            if index.numel() == 0:  # one sync per attack: nothing left to attack
                break
            candidate = attack(model, x[index], y[index])
            with torch.no_grad():
                fooled = model(candidate).argmax(dim=1) != y[index]
            x_adv[index] = candidate
            robust[index[fooled]] = False
            if "queries" in attack.info:
                queries[index] += attack.info["queries"].to(queries.device)
        self.info["queries"] = queries.cpu()
        return x_adv

    def __repr__(self) -> str:
        inner = ", ".join(repr(a) for a in self.components.values())
        return f"AutoAttack(version={self.version!r}, eps={self.eps!r}, norm={self.norm!r}, components=[{inner}])"
