"""``robustlab calibrate-war RUN_DIR``: WAR's ζ from a finished run (Wu et al. 2021, section 5.4)."""

from __future__ import annotations

import argparse

from ..errors import RunError
from ..rundir import RunDirectory
from ._common import emit_json, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        metavar="RUN_DIR",
        help="a finished run, typically a thin model trained with its best λ",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def calibrate(run: RunDirectory) -> dict[str, float]:
    """ζ = the ratio l_nat / l_rob at convergence: the mean over the last epoch's batches."""
    history = run.read_metrics()
    if not history:
        raise RunError(f"run {str(run.path)!r} has no finished epoch")
    last = history[-1]
    if last.get("nat_rob_ratio") is None:
        raise RunError(
            f"run {str(run.path)!r} recorded no natural-risk / robust-regularization ratio "
            "(train it with method.track_terms = true)"
        )
    return {
        "zeta": last["nat_rob_ratio"],
        "epoch": last["epoch"],
        "lam": last.get("lam"),
        "nat_risk": last.get("nat_risk"),
        "rob_reg": last.get("rob_reg"),
    }


def run(args: argparse.Namespace) -> int:
    result = calibrate(RunDirectory.open(args.run))
    if args.json:
        emit_json(result)
    else:
        print(
            f"zeta = {result['zeta']:.6g}   (l_nat / l_rob over epoch {result['epoch']}, trained with lambda = {result['lam']})"
        )
        print(f"use it with: --set method.lam_schedule=war --set method.zeta={result['zeta']:.6g}")
    return 0


register_command(
    "calibrate-war",
    "print WAR's zeta (l_nat / l_rob at convergence) from a finished run",
    add_arguments,
    run,
)
