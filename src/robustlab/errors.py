"""Exception types. Every error a user can cause is a :class:`RobustlabError`.

The CLI turns any of them into one line on stderr and exit code 2, so each message
names the offending key or file, the value, and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobustlabError(Exception):
    """Base class of the errors a user can cause (bad config, missing data, ...)."""


class ConfigError(RobustlabError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class UnknownNameError(ConfigError):
    """A registry lookup (model, dataset, attack, method, ...) named nothing registered."""

    def __init__(self, key: str, value: object, valid: Iterable[str]) -> None:
        self.valid = sorted(valid)
        allowed = f"unknown name; valid: {', '.join(self.valid)}"
        guess = did_you_mean(str(value), self.valid)
        if guess:
            allowed += f" (did you mean {guess!r}?)"
        super().__init__(key, value, allowed)


class DataNotFoundError(RobustlabError, FileNotFoundError):
    """A dataset's official files are not under the data root."""


class DataFormatError(RobustlabError, ValueError):
    """A dataset file exists but does not have the official format."""


class CheckpointError(RobustlabError):
    """A checkpoint is missing, truncated, or fails its checksum."""


class AttackInputError(RobustlabError, ValueError):
    """An attack was given inputs outside its contract (images outside [0, 1], bad labels, ...)."""


class RunError(RobustlabError):
    """A run directory or store entry is missing or in a state the command cannot use."""


class RunFailed(RobustlabError):
    """A run stopped by a fault that is not a typo: a full disk, a NaN loss, an exploding
    gradient. The CLI prints it as one line like any :class:`RobustlabError`, with exit code 3
    (not 2), so a script can tell "fix the command" from "look at the run"."""

    exit_code = 3


class DiskFullError(RunFailed, OSError):
    """A write failed for lack of space (ENOSPC, EDQUOT, SQLite's "database or disk is full");
    the message names the file. What was written before is intact (atomic writes)."""


class NumericalFaultError(RunFailed):
    """Training produced a NaN or infinite loss, or a gradient norm above
    ``train.grad_norm_limit`` (after any ``train.on_nan = "rollback"`` attempts)."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``word``, if any is close enough to be a plausible typo."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
