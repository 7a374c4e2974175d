"""``robustlab config [CONFIG.toml] [--set KEY=VALUE ...]``: the resolved config, or the key table.

The config is validated exactly as ``robustlab train`` validates it (its data loaded, its model
built on the meta device), so what it prints is a run train accepts.
"""

from __future__ import annotations

import argparse

from ..config import build_config, describe_keys, to_toml
from ..training.validation import validate_run
from ._common import add_set_argument, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config file")
    add_set_argument(parser)
    parser.add_argument(
        "--keys",
        action="store_true",
        help="print every key with its default and meaning (Markdown)",
    )


def run(args: argparse.Namespace) -> int:
    if args.keys:
        print(keys_table())
        return 0
    config = build_config(args.config, args.overrides)
    # The checks train makes with the data and the model built (depths, options, sizes),
    # without training or writing: a config printed here is one train accepts.
    validate_run(config)
    print(to_toml(config), end="")
    return 0


def keys_table() -> str:
    """The Markdown table of every config key, as in the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in describe_keys()]
    return "\n".join(rows)


register_command(
    "config", "validate a config and print it resolved (or --keys: every key)", add_arguments, run
)
