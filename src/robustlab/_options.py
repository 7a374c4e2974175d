"""Validation of free-form option tables (``model.options``, ``data.options``) against a factory."""

from __future__ import annotations

import inspect
import typing
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
        expected = _declared_scalar_type(factory, key)
        if expected is not None and not _is_instance(value, expected):
            raise ConfigError(f"{key_prefix}.{key}", value, f"expected {_TYPE_WORDS[expected]}")


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _declared_scalar_type(factory: Callable[..., Any], name: str) -> type | None:
    """The parameter's annotation when it is a plain bool/int/float/str, else None (unchecked)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):
        return None
    hint = hints.get(name)
    return hint if hint in _TYPE_WORDS else None


def _is_instance(value: Any, expected: type) -> bool:
    if expected is float:  # an integer is a fine float; a bool is not a number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
