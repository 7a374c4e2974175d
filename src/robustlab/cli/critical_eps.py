"""``robustlab critical-eps CONFIG --eps LIST [--seeds N] [--fast ...] [--fgsm LIST]``: the
critical budget ε* of a training setup (Xing, Song & Cheng 2022, sections 5-6)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import build_config
from ..errors import ConfigError
from ..rundir import check_can_create, with_absolute_paths
from ._common import _clean, add_set_argument, emit_json, info, register_command
from .phase import parse_eps_list

RUNS_ROOT = Path("runs") / "critical-eps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="TOML config of the adversarial run (method, model, data, ...)"
    )
    add_set_argument(parser)
    parser.add_argument(
        "--eps",
        metavar="LIST",
        help="budgets trained from scratch, increasing, e.g. 0.5/255,1/255,2/255 (Table 1)",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds per budget (config seed, +1, ...)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="also estimate ε* by fine-tuning the clean model and extrapolating (section 6)",
    )
    parser.add_argument(
        "--fast-eps",
        metavar="EPS",
        help="fast: the largest fine-tuning budget (default: the smallest of --eps)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="A",
        help="fast: fine-tuning runs, at ε·k/A for k = 1..A (Table 4's a; default 1)",
    )
    parser.add_argument(
        "--fast-attack", default="pgd", help="fast: the fine-tuning attack, pgd or fgm (one step)"
    )
    parser.add_argument(
        "--fast-epochs",
        type=int,
        help="fast: fine-tuning epochs (default: a tenth of the run, >= 1)",
    )
    parser.add_argument(
        "--fast-lr-factor",
        type=float,
        default=0.1,
        help="fast: fine-tuning learning rate as a multiple of train.lr (default 0.1)",
    )
    parser.add_argument(
        "--fgsm",
        metavar="LIST",
        help="budgets for FGSM training; reports the smallest that overfits catastrophically (Table 2)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the study's runs and figure go (default runs/critical-eps/<setup>-<hash>)",
    )
    parser.add_argument(
        "--store", default=None, metavar="DB", help="results store (default runs/robustlab.db)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _grid(text: str | None, key: str) -> list[float] | None:
    from ..phase import check_eps_grid

    return None if text is None else check_eps_grid(parse_eps_list(text, key), key)


def run(args: argparse.Namespace) -> int:
    from ..phase._runs import clean_config, config_digest, with_budget
    from ..phase.critical import (
        FAST_ATTACKS,
        Study,
        critical_eps_grid,
        fast_critical_eps,
        fast_table,
        fgsm_config,
        fgsm_instability,
        fgsm_table,
        grid_table,
        train_clean,
    )
    from ..phase.plots import plot_critical_eps
    from ..store import DEFAULT_STORE, ResultsStore
    from ..store.sqlite import check_store_location
    from ..training.validation import validate_run

    quiet = args.quiet or args.json
    # Every check first: grids, options, the configs of each kind of run, the output places.
    eps = _grid(args.eps, "--eps")
    fgsm = _grid(args.fgsm, "--fgsm")
    if eps is None and not args.fast and fgsm is None:
        raise ConfigError("--eps", None, "give the budgets to train, e.g. --eps 1/255,2/255,4/255")
    if args.seeds < 1:
        raise ConfigError("--seeds", args.seeds, "a positive integer")
    base = with_absolute_paths(build_config(args.config, args.overrides))
    fast_eps = None
    if args.fast:
        if args.fast_attack not in FAST_ATTACKS:
            raise ConfigError(
                "--fast-attack", args.fast_attack, f"one of {', '.join(FAST_ATTACKS)}"
            )
        if args.repeats < 1:
            raise ConfigError("--repeats", args.repeats, "a positive integer (fine-tuning runs)")
        if args.fast_epochs is not None and args.fast_epochs < 1:
            raise ConfigError("--fast-epochs", args.fast_epochs, "a positive integer")
        if not args.fast_lr_factor > 0:
            raise ConfigError("--fast-lr-factor", args.fast_lr_factor, "must be > 0")
        if args.fast_eps is not None:
            fast_eps = parse_eps_list(args.fast_eps, "--fast-eps")
            if len(fast_eps) != 1 or not fast_eps[0] > 0:
                raise ConfigError("--fast-eps", args.fast_eps, "one budget > 0")
            fast_eps = fast_eps[0]
        elif eps is not None:
            fast_eps = eps[0]
        else:
            raise ConfigError("--fast-eps", None, "give the fine-tuning budget (or --eps)")
    if base.attack.norm == "Linf":
        for key, grid in (("--eps", eps), ("--fgsm", fgsm), ("--fast-eps", [fast_eps or 0])):
            if grid and max(grid) > 1:
                raise ConfigError(key, max(grid), "Linf budgets of images in [0, 1] are at most 1")
    fast_epochs = args.fast_epochs or max(1, round(base.train.epochs / 10))
    validate_run(clean_config(base))
    for grid, make in ((eps, with_budget), (fgsm, fgsm_config)):
        if grid:
            validate_run(make(base, grid[-1]))
    group = config_digest(base)[:12]
    root = (
        Path(args.out)
        if args.out
        else RUNS_ROOT / (f"{base.method.name}-{base.model.name}-{base.data.name}-{group}")
    )
    store_path = Path(args.store) if args.store else DEFAULT_STORE
    check_can_create(root, "--out")
    check_store_location(store_path, create=True)

    store = ResultsStore(store_path)
    root.mkdir(parents=True, exist_ok=True)
    seeds = [base.seed + k for k in range(args.seeds)]
    study = Study(
        base,
        root,
        group,
        store,
        seeds,
        show_progress=not quiet,
        say=lambda message: info(f"critical-eps: {message}", quiet),
    )
    info(f"critical-eps: study {group} in {root.resolve()}", quiet)
    clean, clean_runs = train_clean(study)
    payload: dict[str, Any] = {"group": group, "root": str(root.resolve())}
    text: list[str] = []
    grid_result = None
    if eps is not None:
        grid_result = critical_eps_grid(study, eps, clean)
        figure = plot_critical_eps(grid_result, root / "critical_eps.png", _unit(base))
        grid_result.figure = str(figure.resolve()) if figure is not None else None
        payload.update(grid_result.summary())
        text.append(grid_table(grid_result))
        if figure is not None:
            text.append(f"figure: {figure.resolve()}")
    else:
        payload.update({"critical_eps": None, "clean_test_loss": clean.test_loss})
    if args.fast:
        fast = fast_critical_eps(
            study,
            clean,
            clean_runs,
            fast_eps,
            args.repeats,
            args.fast_attack,
            fast_epochs,
            args.fast_lr_factor,
            grid_result,
        )
        payload["fast"] = fast.summary()
        text.append(fast_table(fast, base.attack.norm))
    if fgsm is not None:
        unstable = fgsm_instability(study, fgsm)
        unstable = dataclasses.replace(
            unstable, critical_eps=grid_result.critical_eps if grid_result else None
        )
        payload["fgsm"] = unstable.summary()
        text.append(fgsm_table(unstable, base.attack.norm))
    # The JSON answer is also kept beside the runs (NaN as null, as --json prints it).
    (root / "critical_eps.json").write_text(json.dumps(_clean(payload), indent=2) + "\n")
    if args.json:
        emit_json(payload)
    else:
        print("\n\n".join(text))
    return 0


def _unit(config: Any) -> float:
    """Plot L∞ image budgets in units of 1/255, as papers write them."""
    return 1 / 255 if config.attack.norm == "Linf" else 1.0


register_command(
    "critical-eps",
    "the critical budget ε* where adversarial training departs from clean training (Xing et al. 2022)",
    add_arguments,
    run,
    description="Train the clean model and one adversarial model per budget (ordinary runs in the "
    "store; a rerun skips finished ones), then find ε*, the budget whose adversarial training loss "
    "reaches the clean model's clean test loss (Xing, Song & Cheng 2022, Table 1); --fast "
    "estimates it by fine-tuning (Table 4), --fgsm finds where FGSM training collapses (Table 2).",
)
