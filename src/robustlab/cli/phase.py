"""``robustlab phase simulate|linear-threshold``: the phase transition from clean to adversarial
training in simple models (Xing, Song & Cheng 2022, section 4; Liu et al. 2020, Theorem 1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._fraction import parse_number
from ..errors import ConfigError
from ..registry import Registry
from ..report import render_table
from ._common import emit_json, info, register_command

# `phase`'s own subcommands: name -> (add_arguments, run, help).
PHASE_COMMANDS: Registry[Any] = Registry("phase command", "phase")


def parse_eps_list(text: str, key: str = "--eps") -> list[float]:
    """``"0.1,0.2,8/255"`` -> budgets (fractions allowed); :class:`ConfigError` on a bad item."""
    values = []
    for item in text.split(","):
        try:
            values.append(parse_number(item))
        except ValueError:
            raise ConfigError(
                key, text, "comma-separated numbers, e.g. 0.1,0.2,0.4 or 1/255,2/255"
            ) from None
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="phase_command", metavar="SUBCOMMAND", parser_class=type(parser)
    )
    sub.required = True
    for name in PHASE_COMMANDS.names():
        add, _, help_text = PHASE_COMMANDS.get(name)
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    _, handler, _ = PHASE_COMMANDS.get(args.phase_command)
    return int(handler(args) or 0)


# --------------------------------------------------------------------------------------------
# simulate


def _add_simulate(parser: argparse.ArgumentParser) -> None:
    from ..phase import SIMULATORS

    parser.add_argument("--model", default="linear", help=f"simulator: {', '.join(SIMULATORS)}")
    parser.add_argument("--d", type=int, required=True, help="input dimension d")
    parser.add_argument("--n", type=int, required=True, help="training points n")
    parser.add_argument(
        "--repeats",
        type=int,
        default=300,
        help="training sets drawn (the distribution of clean training; 300 as the paper, >= 10)",
    )
    parser.add_argument(
        "--eps",
        metavar="LIST",
        help="L2 budgets, increasing (default: 20 with log(ε/ε*) evenly in [-3, 3], ε* = sqrt(d/n))",
    )
    parser.add_argument("--sigma", type=float, default=1.0, help="noise std of y (default 1)")
    parser.add_argument(
        "--steps", type=int, help="gradient-descent steps (default: until clean GD has converged)"
    )
    parser.add_argument("--lr", type=float, help="step size (default 1/L at the largest ε)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, help="two_layer: hidden units (default 32)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where simulation.json and the figures go (default runs/phase/simulate-MODEL-dD-nN-rR-sSEED)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _run_simulate(args: argparse.Namespace) -> int:
    from ..phase import simulate
    from ..phase._base import check_simulation
    from ..phase.plots import draw_simulation
    from ..rundir import check_can_create

    eps = parse_eps_list(args.eps) if args.eps is not None else None
    options = {"hidden": args.hidden} if args.hidden is not None else {}
    if args.hidden is not None and args.model != "two_layer":
        raise ConfigError("--hidden", args.hidden, "applies to --model two_layer only")
    out = Path(
        args.out
        or f"runs/phase/simulate-{args.model}-d{args.d}-n{args.n}-r{args.repeats}-s{args.seed}"
    )
    # Every check before the first line of progress and the first write.
    check_simulation(
        args.model, args.d, args.n, args.repeats, eps, args.sigma, args.steps, args.lr, **options
    )
    check_can_create(out, "--out")
    info(
        f"phase simulate: {args.model}, d={args.d}, n={args.n}, {args.repeats} repeats, "
        f"L2 budgets {'given' if eps else 'log(ε/ε*) in [-3, 3]'}",
        args.json,
    )
    result = simulate(
        args.model,
        d=args.d,
        n=args.n,
        repeats=args.repeats,
        eps=eps,
        sigma=args.sigma,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        **options,
    )
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_simulation(result, out)
    payload = {**result.summary(), "out": str(out.resolve()), "figures": figures}
    (out / "simulation.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.json:
        emit_json(payload)
        return 0
    print(simulation_table(result))
    print(f"\nfigures and simulation.json in {out.resolve()}")
    return 0


def simulation_table(result: Any) -> str:
    rows = [
        [f"{ratio:+.2f}", eps, p_params, p_loss, rel]
        for ratio, eps, p_params, p_loss, rel in zip(
            result.log_ratio,
            result.eps,
            result.p_value_params,
            result.p_value_loss,
            result.relative_difference[-1],
            strict=True,
        )
    ]
    title = (
        f"{result.model}: d={result.d}, n={result.n}, σ={result.sigma:g}, {result.repeats} repeats, "
        f"{result.steps} GD steps of {result.lr:.3g}; ε* = sqrt(d/n) = {result.eps_star:.4g} (L2); "
        f"{result.seconds:.1f} s"
    )
    table = render_table(
        ["log(ε/ε*)", "ε", "p-value θ(T)", "p-value loss", "‖θ(ε)−θ(0)‖/‖θ(0)‖"], rows
    )
    return f"{title}\n{table}"


PHASE_COMMANDS.register("simulate")(
    (
        _add_simulate,
        _run_simulate,
        "linear regression (or a two-layer network) trained cleanly and adversarially: "
        "p-values and trajectories against log(ε/ε*) (Xing et al. Figs. 2-3)",
    )
)


# --------------------------------------------------------------------------------------------
# linear-threshold


def _add_linear_threshold(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="dataset (its training split is used)")
    parser.add_argument("--data-root", default="data", metavar="DIR")
    parser.add_argument("--norm", default="Linf", help="threat model: Linf or L2")
    parser.add_argument("--n", type=int, help="use the first N training points (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _run_linear_threshold(args: argparse.Namespace) -> int:
    from ..data import create_dataset
    from ..phase.linear_threshold import NORMS, zero_classifier_threshold

    if args.norm not in NORMS:
        raise ConfigError("--norm", args.norm, f"one of {', '.join(NORMS)}")
    if args.n is not None and args.n < 2:
        raise ConfigError("--n", args.n, "at least 2 points")
    data = create_dataset(args.data, args.data_root)
    x = data.train_x[: args.n].double().div(255).numpy()
    y = data.train_y[: args.n].numpy()
    result = zero_classifier_threshold(x, y, args.norm, num_classes=data.num_classes)
    payload = {"data": args.data, **result.summary()}
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"{args.data}: linear classifier f(x) = Wᵀx on {result.n} training points in [0, 1], "
        f"{result.num_classes} classes, {result.dim} inputs\n"
        f"zero classifier optimal for {result.norm} ε ≥ {result.threshold:.6g} "
        f"(Liu et al. 2020, Theorem 1; bisection to a relative width of {result.tolerance:g}, "
        f"{result.iterations} steps)"
    )
    return 0


PHASE_COMMANDS.register("linear-threshold")(
    (
        _add_linear_threshold,
        _run_linear_threshold,
        "the budget beyond which a linear classifier's adversarial loss is minimized by the "
        "zero classifier (Liu et al. 2020, Theorem 1)",
    )
)


register_command(
    "phase",
    "the phase transition in simple models: simulate (Xing et al. 2022), linear-threshold "
    "(Liu et al. 2020)",
    add_arguments,
    run,
)
