"""``robustlab demo``: the point of the project in one screen.

Trains a clean and a PGD-adversarially-trained model on the embedded digits dataset, attacks
both with a stronger PGD than either saw in training, and prints natural accuracy, robust
accuracy and perturbation stability side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..attacks import create_attack
from ..config import build_config
from ..report import evaluation_label, format_eps, render_table
from ..rundir import RunDirectory, check_can_create, new_run_id, with_absolute_paths
from ..store import ResultsStore
from ..training.runner import fit, prepare
from ._common import add_set_argument, add_store_argument, emit_json, info, register_command
from ._sources import load_model
from .eval import evaluate_model

# The demo is the default configuration (an MLP of width 256 on the 8x8 digits, Linf eps = 0.2,
# about three grey levels of the data, whose quantum is 1/16), trained once per method: there
# clean and PGD-adversarial training separate clearly, and both train in well under a minute on
# 2 CPU cores.
METHODS = ("clean", "pgd_at")
# The final evaluation: more steps and random restarts than the per-epoch PGD-20.
FINAL_ATTACK = {"steps": 50, "restarts": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: train.epochs)",
    )
    parser.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="where the two run directories go"
    )
    add_set_argument(parser, "override a demo setting (applies to both runs)")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet or args.json
    overrides = [
        *args.overrides,
        *([f"train.epochs={args.epochs}"] if args.epochs is not None else []),
    ]
    configs = {
        m: with_absolute_paths(build_config(None, [*overrides, f"method.name={m}"]))
        for m in METHODS
    }
    experiments = {
        m: prepare(c) for m, c in configs.items()
    }  # all checks before anything is written
    check_can_create(Path(args.out), "--out")  # and --store's, in ResultsStore: before writing
    store = ResultsStore(args.store)
    rows: list[dict[str, Any]] = []
    for method, experiment in experiments.items():
        config = configs[method]
        run_id = new_run_id(config)
        run_dir = RunDirectory.create(Path(args.out) / run_id, config, run_id, store=args.store)
        info(
            f"[{method}] training {config.model.name} (width {experiment.model_spec['width']}) on {config.data.name} "
            f"for {config.train.epochs} epochs -> {run_dir.path}",
            quiet,
        )
        start = time.perf_counter()
        fit(experiment, run_dir, run_id, store, show_progress=not quiet)
        train_seconds = time.perf_counter() - start
        ev = config.eval
        attack = create_attack(
            "pgd",
            eps=ev.eps,
            norm=ev.norm,
            steps=FINAL_ATTACK["steps"],
            restarts=FINAL_ATTACK["restarts"],
        )
        loaded = load_model(str(run_dir.path), "last", experiment.device)
        summary, _ = evaluate_model(
            loaded, {"pgd": attack}, device=experiment.device, store_path=args.store
        )
        summary["label"] = evaluation_label(
            summary["source"], summary["attack_settings"], ev.norm, ev.eps, summary["split"]
        )
        rows.append({"method": method, "run_id": run_id, "train_seconds": train_seconds, **summary})
    config = configs[METHODS[0]]
    width = experiments[METHODS[0]].model_spec["width"]
    if args.json:
        emit_json({"eps": config.eval.eps, "norm": config.eval.norm, "runs": rows})
        return 0
    print()
    print(
        f"{config.data.name}, {config.model.name} width {width}, PGD-{FINAL_ATTACK['steps']} x {FINAL_ATTACK['restarts']} restarts "
        f"at eps = {format_eps(config.eval.eps)} ({config.eval.norm}), {rows[0]['n']} test points"
    )
    table = [
        [
            r["method"],
            r["natural_accuracy"],
            r["robust_accuracy"],
            r["perturbation_stability"],
            r["train_seconds"],
            r["label"],
        ]
        for r in rows
    ]
    print(
        render_table(
            ["method", "natural acc", "robust acc", "stability", "train s", "measured"],
            table,
            ["auto", "pct", "pct", "pct", "auto", "auto"],
        )
    )
    print("\nstability: the share of test points whose prediction the attack cannot change;")
    print("robust = correct AND stable (Wu et al. 2021, eq. 3.1).")
    print("Inspect the runs with `robustlab runs` and `robustlab show RUN`.")
    return 0


register_command(
    "demo",
    "train clean and PGD-AT models on digits and compare them (about a minute on a CPU)",
    add_arguments,
    run,
)
