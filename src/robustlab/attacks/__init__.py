"""Attacks behind one interface: ``attack = create_attack(name, **kw); x_adv = attack(model, x, y)``.

Every attack keeps ``x_adv`` within its norm ball around ``x`` and inside [0, 1], restores the
model's train/eval mode, and leaves parameter gradients untouched.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from . import apgd, apgd_t, autoattack, fab, fgsm, pgd, square, trades_kl  # noqa: F401  (registration)
from .base import ATTACKS, Attack, input_gradient, model_mode
from .functional import LOSSES, THREAT_MODELS, ThreatModel, clip_to_ball, threat_model

__all__ = [
    "ATTACKS",
    "LOSSES",
    "RENAMED_OPTIONS",
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


# The shared vocabulary of attack options: a concept has one keyword in every attack, the same
# as ``robustlab eval``'s flag (``--steps`` sets ``steps``). These names (AutoAttack's, and
# robustlab's before) were replaced; passing one gets a pointer to its new name.
RENAMED_OPTIONS = {
    "n_iter": "steps",
    "n_restarts": "restarts",
    "n_queries": "queries",
    "n_target_classes": "targets",
}


def list_attacks(pattern: str | None = None) -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names(pattern)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` with constructor arguments ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ConfigError: an argument the attack does not take, or an invalid value.
    """
    from .._options import accepted_options, check_options

    factory = ATTACKS.get(name)
    accepted = accepted_options(factory)
    for old, new in RENAMED_OPTIONS.items():
        if old in kwargs and new in accepted:
            raise ConfigError(f"attack[{name}].{old}", kwargs[old], f"renamed to {new!r}")
    check_options(name, factory, kwargs, key_prefix=f"attack[{name}]")
    attack = factory(**kwargs)
    attack.name = name
    return attack
