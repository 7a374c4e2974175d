"""``robustlab calibrate-war RUN_DIR``: WAR's ζ from a finished run (Wu et al. 2021, section 5.4).

ζ is the ratio of the last epoch's natural risk to its robust regularization, both summed over
the epoch's examples (``nat_risk / rob_reg`` as recorded), rather than the mean or the median
of the per-batch ratios:

- it is the ratio of the two epoch losses Wu et al. plot (Figure 1) and Algorithm 1 compares;
- one batch whose l_rob is near 0 moves it by that batch's share of the epoch only, where the
  mean of per-batch ratios explodes (the 1e-12 floor gave ζ = 1e12); the median is robust too,
  but ignores how large the losses of the other batches are;
- it needs only the epoch means, which every run records (runs made before the per-batch
  quantiles existed calibrate too).

The spread of the per-batch ratios (10%, 50%, 90% quantiles) and ζ over the last epochs are
printed beside it, and a warning says when the run is unfinished, ζ still moving (not
converged) or the model at chance level: ζ from such a run would calibrate WAR to nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import RunError
from ..rundir import RunDirectory
from ._common import emit_json, register_command

# ζ is converged when it moved by at most this fraction over the last CONVERGENCE_EPOCHS epochs.
CONVERGENCE_EPOCHS = 3
CONVERGENCE_TOLERANCE = 0.1
# A natural accuracy below chance (1 / classes) plus this margin is "at chance level".
CHANCE_MARGIN = 0.05
SPREAD_KEYS = {
    "p10": "nat_rob_ratio_p10",
    "median": "nat_rob_ratio_median",
    "p90": "nat_rob_ratio_p90",
}
# Where a natural accuracy of the last epoch is read from, in order of preference.
ACCURACY_KEYS = ("train_nat_acc", "val_nat_acc", "test_nat_acc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        metavar="RUN_DIR",
        help="a finished run, typically a thin model trained with its best λ",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def epoch_zeta(metrics: dict[str, Any]) -> float | None:
    """ζ of one epoch: its natural risk over its robust regularization (``None`` if undefined)."""
    nat, rob = metrics.get("nat_risk"), metrics.get("rob_reg")
    if nat is None or rob is None or rob <= 0:
        return None
    return nat / rob


def calibrate(run: RunDirectory) -> dict[str, Any]:
    """ζ from the last epoch of ``run``, its spread, and warnings about the run's state.

    Raises:
        RunError: no finished epoch, no recorded terms, or a robust regularization <= 0.
    """
    history = run.read_metrics()
    if not history:
        raise RunError(f"run {str(run.path)!r} has no finished epoch")
    last = history[-1]
    if last.get("nat_risk") is None or last.get("rob_reg") is None:
        raise RunError(
            f"run {str(run.path)!r} recorded no natural risk and robust regularization "
            "(train it with method.track_terms = true)"
        )
    zeta = epoch_zeta(last)
    if zeta is None:
        raise RunError(
            f"run {str(run.path)!r}: the robust regularization of epoch {last['epoch']} is "
            f"{last['rob_reg']:.4g} (<= 0), so zeta = l_nat / l_rob is undefined; the training "
            "attack did not raise the loss (check attack.eps and attack.steps)"
        )
    spread = (
        {name: last[key] for name, key in SPREAD_KEYS.items()}
        if all(last.get(key) is not None for key in SPREAD_KEYS.values())
        else None
    )
    recent = [{"epoch": m["epoch"], "zeta": epoch_zeta(m)} for m in history[-CONVERGENCE_EPOCHS:]]
    return {
        "zeta": zeta,
        "epoch": last["epoch"],
        "lam": last.get("lam"),
        "nat_risk": last["nat_risk"],
        "rob_reg": last["rob_reg"],
        "batch_spread": spread,
        "recent": recent,
        "warnings": _warnings(run, last, recent),
    }


def _warnings(run: RunDirectory, last: dict[str, Any], recent: list[dict[str, Any]]) -> list[str]:
    """Why ζ from this run may not be the converged ratio of a model that learned something."""
    warnings = []
    status = run.read_info().get("status")
    if status not in (None, "finished"):
        warnings.append(
            f"the run is {status!r}, not finished: zeta is calibrated at convergence "
            "(resume it with `robustlab train --resume RUN_DIR`)"
        )
    zetas = [r["zeta"] for r in recent]
    if len(zetas) < CONVERGENCE_EPOCHS:
        warnings.append(
            f"only {len(zetas)} epoch(s) recorded: cannot tell whether zeta converged "
            f"(it is checked over the last {CONVERGENCE_EPOCHS})"
        )
    elif None in zetas:
        warnings.append("the robust regularization was <= 0 in a recent epoch: not converged")
    else:
        moved = (max(zetas) - min(zetas)) / zetas[-1]
        if moved > CONVERGENCE_TOLERANCE:
            shown = ", ".join(f"{z:.4g}" for z in zetas)
            warnings.append(
                f"zeta moved by {moved:.0%} over the last {len(zetas)} epochs ({shown}): "
                "not converged; train the calibration run longer"
            )
    classes = _num_classes(run)
    accuracy_key = next((k for k in ACCURACY_KEYS if last.get(k) is not None), None)
    if classes and accuracy_key is not None:
        chance = 1.0 / classes
        accuracy = last[accuracy_key]
        if accuracy < chance + CHANCE_MARGIN:
            warnings.append(
                f"{accuracy_key} = {accuracy:.1%} is at chance level (1/{classes} = {chance:.1%}): "
                "the model learned nothing, and zeta from it calibrates WAR to nothing"
            )
    return warnings


def _num_classes(run: RunDirectory) -> int | None:
    """The number of classes (run.json; for older runs the last checkpoint's model spec)."""
    classes = run.read_info().get("num_classes")
    if classes is None and run.last_checkpoint.exists():
        from ..training.checkpoint import load_checkpoint

        classes = load_checkpoint(run.last_checkpoint, map_location="cpu")["model_spec"].get(
            "num_classes"
        )
    return classes


def run(args: argparse.Namespace) -> int:
    result = calibrate(RunDirectory.open(args.run))
    for warning in result["warnings"]:
        print(f"robustlab calibrate-war: warning: {warning}", file=sys.stderr)
    if args.json:
        emit_json(result)
        return 0
    zeta = result["zeta"]
    print(
        f"zeta = {zeta:.6g}   (l_nat / l_rob = {result['nat_risk']:.4g} / {result['rob_reg']:.4g}, "
        f"summed over epoch {result['epoch']}, trained with lambda = {result['lam']})"
    )
    spread = result["batch_spread"]
    if spread is not None:
        print(
            f"per-batch l_nat / l_rob in epoch {result['epoch']}: 10% {spread['p10']:.4g}, "
            f"median {spread['median']:.4g}, 90% {spread['p90']:.4g}"
        )
    else:
        print("per-batch spread: not recorded by this run")
    shown = ", ".join(
        f"{r['epoch']}: {r['zeta']:.4g}" if r["zeta"] is not None else f"{r['epoch']}: undefined"
        for r in result["recent"]
    )
    print(f"zeta of the last epochs: {shown}")
    print(f"use it with: --set method.lam_schedule=war --set method.zeta={zeta:.6g}")
    return 0


register_command(
    "calibrate-war",
    "print WAR's zeta (l_nat / l_rob at convergence) from a finished run",
    add_arguments,
    run,
)
