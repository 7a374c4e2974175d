"""Validation of free-form option tables (``model.options``, ``data.options``) against a factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import ConfigError, did_you_mean


def accepted_options(factory: Callable[..., Any], fixed: Iterable[str] = ()) -> list[str]:
    """Keyword options a factory takes, excluding the ``fixed`` arguments the caller always passes."""
    params = inspect.signature(factory).parameters.values()
    skip = set(fixed)
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    ]


def check_options(
    owner: str,
    factory: Callable[..., Any],
    options: Mapping[str, Any],
    *,
    key_prefix: str,
    fixed: Iterable[str] = (),
) -> None:
    """Raise :class:`ConfigError` naming the first option ``factory`` does not accept."""
    valid = accepted_options(factory, fixed)
    for key, value in options.items():
        if key not in valid:
            allowed = f"{owner} takes options: {', '.join(valid) or 'none'}"
            guess = did_you_mean(key, valid)
            if guess:
                allowed += f" (did you mean {guess!r}?)"
            raise ConfigError(f"{key_prefix}.{key}", value, allowed)
