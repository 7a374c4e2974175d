"""Every published method and attack is registered.

Tests parametrized over ``list_methods()`` / ``list_attacks()`` silently lose the cases of a name
whose registration broke (a module no longer imported, a decorator removed); these checks make
that a failure. The names are the ones the README documents; new names may be added freely.
"""

from __future__ import annotations

import pytest

from robustlab.attacks import create_attack, list_attacks
from robustlab.training import list_methods

METHODS = {"clean", "pgd_at", "trades", "mart", "gat", "awp", "fgsm_rs"}
ATTACKS = {
    "fgsm",
    "pgd",
    "trades-kl",
    "apgd",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "fab",
    "fab-t",
    "square",
    "autoattack",
}


def test_every_published_method_is_registered() -> None:
    missing = METHODS - set(list_methods())
    assert not missing, f"not registered: {sorted(missing)}"


def test_every_published_attack_is_registered() -> None:
    missing = ATTACKS - set(list_attacks())
    assert not missing, f"not registered: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_published_attack_can_be_created(name: str) -> None:
    assert callable(create_attack(name, eps=0.1))
