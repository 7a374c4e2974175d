"""What a number measured, in a few words: ``last@30 pgd-20 Linf ε=0.2 test``.

A robust accuracy means nothing without the weights it was measured on, the attack and its
budget of steps and restarts, the threat model and the points attacked: the same weights give
different numbers under PGD-20 and PGD-50 x 3, on 1,000 test points and on all of them. Every
table that prints a robust accuracy (``runs``, ``show``, ``train``, ``demo``) labels it with
:func:`evaluation_label`, built from the settings an evaluation records
(:func:`attack_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The attack settings worth naming, as the attacks call them (one vocabulary, issue 8 point 20).
SETTINGS = ("steps", "restarts", "queries", "version")


def attack_settings(attacks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The settings of each attack of an evaluation, in cascade order, as JSON-ready dicts:
    ``[{"name": "pgd", "steps": 20, "restarts": 1}]``."""
    out = []
    for name, attack in attacks.items():
        entry: dict[str, Any] = {"name": name}
        for key in SETTINGS:
            value = getattr(attack, key, None)
            if value is not None:
                entry[key] = value
        out.append(entry)
    return out


def attack_label(settings: Sequence[Mapping[str, Any]] | None, fallback: str = "?") -> str:
    """``pgd-20``, ``pgd-50x3`` (3 restarts), ``square-5000q``, ``autoattack-standard``;
    a cascade joins its attacks with ``+``. ``fallback`` (the stored attack name) when an
    older store recorded no settings."""
    if not settings:
        return fallback
    parts = []
    for s in settings:
        label = str(s["name"])
        if s.get("version"):
            label += f"-{s['version']}"
        elif s.get("steps") is not None:
            label += f"-{s['steps']}"
        elif s.get("queries") is not None:
            label += f"-{s['queries']}q"
        if (s.get("restarts") or 1) > 1:
            label += f"x{s['restarts']}"
        parts.append(label)
    return "+".join(parts)


def format_eps(eps: float) -> str:
    """``0.2``, ``8/255`` (a multiple of 1/255 whose decimal form is long), else 4 digits."""
    short = f"{eps:g}"
    if len(short) <= 6:
        return short
    grey_levels = eps * 255
    if abs(grey_levels - round(grey_levels)) < 1e-6:
        return f"{round(grey_levels)}/255"
    return f"{eps:.4g}"


def evaluation_label(
    source: str | None,
    settings: Sequence[Mapping[str, Any]] | None,
    norm: str,
    eps: float,
    split: str = "test",
    attack: str = "?",
) -> str:
    """``last@30 pgd-20 Linf ε=0.2 test``: weights, attack, threat model, points."""
    parts = [source, attack_label(settings, attack), f"{norm} ε={format_eps(eps)}", split]
    return " ".join(p for p in parts if p)


def stored_evaluation_label(evaluation: Mapping[str, Any], with_source: bool = True) -> str:
    """:func:`evaluation_label` of a row of :meth:`ResultsStore.evaluations`."""
    details = evaluation.get("details") or {}
    return evaluation_label(
        evaluation["source"] if with_source else None,
        details.get("attack_settings"),
        evaluation["norm"],
        evaluation["eps"],
        details.get("split", "test"),
        evaluation["attack"],
    )


def epoch_split(n: int | None) -> str:
    """The test points evaluated each epoch (``eval.n``): ``test`` or ``test[:1000]``."""
    return "test" if n is None else f"test[:{n}]"
