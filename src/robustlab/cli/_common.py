"""Helpers shared by the subcommands: output, store access, errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from ..registry import Registry

# Each subcommand module registers ``(add_arguments, run)`` under its name.
COMMANDS: Registry[Any] = Registry("command", "command")


def emit_json(payload: dict[str, Any]) -> None:
    """Print exactly one JSON object on stdout (NaN becomes null: JSON has no NaN)."""
    print(json.dumps(_clean(payload), indent=2))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def info(message: str, quiet: bool = False) -> None:
    """Human-readable progress messages go to stderr, keeping stdout for results."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def add_set_argument(
    parser: Any, help: str = "override one key, e.g. --set attack.eps=8/255 (repeatable)"
) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help=help
    )


def add_threads_argument(parser: Any, what: str = "") -> None:
    """``--threads N``: torch's CPU threads (0: auto, by the model's size; README: CPU speed)."""
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"CPU threads of torch{what} (0: auto, one for small models, every core for large ones)",
    )


def checked_threads(value: int | None, flag: str = "--threads") -> int | None:
    """``--threads`` as given (None: not given); a negative count is a :class:`ConfigError`."""
    from ..errors import ConfigError

    if value is not None and value < 0:
        raise ConfigError(flag, value, "a thread count >= 0 (0: auto, by the model's size)")
    return value


def add_store_argument(parser: Any, of_run: bool = False) -> None:
    """``--store DB``. With ``of_run`` (commands given an existing run: ``eval RUN``,
    ``train --resume RUN``) it is unset by default, so that :func:`store_for` picks the store
    the run recorded rather than one under the working directory."""
    from ..store import DEFAULT_STORE

    parser.add_argument(
        "--store",
        default=None if of_run else str(DEFAULT_STORE),
        metavar="DB",
        help=f"results store (default {DEFAULT_STORE}"
        + ("; for an existing run, the store it recorded)" if of_run else ")"),
    )


def store_for(given: str | None, run: Any = None) -> Path:
    """The results store to use: ``--store`` if given, else the one ``run`` (a
    :class:`~robustlab.rundir.RunDirectory`) recorded, else the default ``runs/robustlab.db``."""
    from ..store import DEFAULT_STORE

    if given is not None:
        return Path(given)
    recorded = run.recorded_store() if run is not None else None
    return recorded if recorded is not None else DEFAULT_STORE


class Command:
    """A subcommand: its help, how it adds its arguments, and what it runs."""

    def __init__(
        self, help: str, add_arguments: Any, run: Any, description: str | None = None
    ) -> None:
        self.help, self.add_arguments, self.run = help, add_arguments, run
        self.description = description or help


def register_command(
    name: str, help: str, add_arguments: Any, run: Any, description: str | None = None
) -> None:
    COMMANDS.register(name)(Command(help, add_arguments, run, description))
