"""Attacks behind one interface: ``attack = create_attack(name, **kw); x_adv = attack(model, x, y)``.

Every attack keeps ``x_adv`` within its norm ball around ``x`` and inside [0, 1], restores the
model's train/eval mode, and leaves parameter gradients untouched.
"""

from __future__ import annotations

from typing import Any

from . import apgd, apgd_t, autoattack, fab, fgsm, pgd, square, trades_kl  # noqa: F401  (registration)
from .base import ATTACKS, Attack, input_gradient, model_mode
from .functional import LOSSES, THREAT_MODELS, ThreatModel, clip_to_ball, threat_model

__all__ = [
    "ATTACKS",
    "LOSSES",
    "THREAT_MODELS",
    "Attack",
    "ThreatModel",
    "clip_to_ball",
    "create_attack",
    "input_gradient",
    "list_attacks",
    "model_mode",
    "threat_model",
]


def list_attacks(pattern: str | None = None) -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names(pattern)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` with constructor arguments ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ConfigError: an argument the attack does not take, or an invalid value.
    """
    from .._options import check_options

    factory = ATTACKS.get(name)
    check_options(name, factory, kwargs, key_prefix=f"attack[{name}]")
    attack = factory(**kwargs)
    attack.name = name
    return attack
