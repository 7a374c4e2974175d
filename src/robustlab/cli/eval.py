"""``robustlab eval RUN_DIR [--attack pgd] [--eps 8/255] [--steps 20] [--n N] [--json]``"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .._fraction import parse_number
from .._options import accepted_options
from ..attacks import ATTACKS, Attack, create_attack
from ..config import NORMS, RunConfig, default_alpha
from ..errors import ConfigError
from ..evaluation import STABILITY_LABELS, RobustnessResult, evaluate_robustness
from ..progress import Progress
from ..report import render_table
from ..rundir import RunDirectory
from ..store import ResultsStore
from ..training.checkpoint import seed_everything
from ..training.runner import load_data, load_trained_model, resolve_device
from ._common import add_store_argument, emit_json, info, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory written by robustlab train")
    parser.add_argument("--checkpoint", default="last", help="last (default) or best")
    parser.add_argument(
        "--attack",
        default="pgd",
        help="attack name, or several joined by commas (worst case per point)",
    )
    parser.add_argument("--eps", help="budget, e.g. 8/255 (default: the run's eval.eps)")
    parser.add_argument("--norm", help="Linf or L2 (default: the run's eval.norm)")
    parser.add_argument(
        "--steps", type=int, help="attack iterations (default: the run's eval.steps)"
    )
    parser.add_argument("--alpha", help="step size (default: 2.5 * eps / steps)")
    parser.add_argument(
        "--restarts", type=int, help="random restarts (default: the run's eval.restarts)"
    )
    parser.add_argument("--n", type=int, help="evaluate the first N test points (default: all)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (default: the run's eval.batch_size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    parser.add_argument(
        "--stability-labels",
        choices=STABILITY_LABELS,
        default=None,
        help="attack the predicted (default) or the true label",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def attack_settings(args: argparse.Namespace, config: RunConfig) -> dict[str, Any]:
    """Attack arguments: the command line's, else the run's evaluation config."""
    eps = _number("--eps", args.eps) if args.eps is not None else config.eval.eps
    if eps < 0:
        raise ConfigError("--eps", args.eps, "must be >= 0")
    norm = args.norm or config.eval.norm
    if norm not in NORMS:
        raise ConfigError("--norm", norm, f"one of {', '.join(NORMS)}")
    if norm == "Linf" and eps > 1:
        raise ConfigError("--eps", args.eps, "must be in [0, 1] for Linf on images in [0, 1]")
    steps = args.steps if args.steps is not None else config.eval.steps
    if steps <= 0:
        raise ConfigError("--steps", steps, "must be > 0")
    restarts = args.restarts if args.restarts is not None else config.eval.restarts
    if restarts <= 0:
        raise ConfigError("--restarts", restarts, "must be > 0")
    if args.alpha is not None:
        alpha = _number("--alpha", args.alpha)
    elif eps == config.eval.eps and steps == config.eval.steps:
        alpha = config.eval.alpha
    else:
        alpha = default_alpha(eps, steps)
    return {"eps": eps, "norm": norm, "steps": steps, "alpha": alpha, "restarts": restarts}


def _number(flag: str, text: str) -> float:
    try:
        return parse_number(text)
    except ValueError:
        raise ConfigError(
            flag, text, "expected a number (fractions such as 8/255 allowed)"
        ) from None


def build_attacks(names: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    attacks = {}
    for name in names:
        factory = ATTACKS.get(name)
        accepted = set(accepted_options(factory))
        attacks[name] = create_attack(name, **{k: v for k, v in settings.items() if k in accepted})
    return attacks


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet or args.json
    run_dir = RunDirectory.open(args.run)
    config = run_dir.read_config()
    names = [n.strip() for n in args.attack.split(",") if n.strip()]
    if not names:
        raise ConfigError("--attack", args.attack, f"one or more of {', '.join(ATTACKS.names())}")
    attacks = build_attacks(names, attack_settings(args, config))
    if args.n is not None and args.n <= 0:
        raise ConfigError("--n", args.n, "must be > 0")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ConfigError("--batch-size", args.batch_size, "must be > 0")
    summary, results = evaluate_run(
        run_dir,
        attacks,
        checkpoint=args.checkpoint,
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        stability_labels=args.stability_labels,
        device=args.device,
        store_path=args.store,
        show_progress=not quiet,
    )
    if args.json:
        emit_json(summary)
        return 0
    info(
        f"run {summary['run_id']} ({args.checkpoint} checkpoint, epoch {summary['epoch']}), {summary['n']} test points"
    )
    rows = [
        [name, r.natural_accuracy, r.robust_accuracy, r.perturbation_stability, r.seconds]
        for name, r in results.items()
    ]
    if len(results) > 1:
        rows.append(
            [
                "worst case",
                summary["natural_accuracy"],
                summary["robust_accuracy"],
                summary["perturbation_stability"],
                summary["seconds"],
            ]
        )
    print(
        render_table(
            ["attack", "natural acc", "robust acc", "stability", "seconds"],
            rows,
            ["auto", "pct", "pct", "pct", "auto"],
        )
    )
    return 0


def evaluate_run(
    run_dir: RunDirectory,
    attacks: dict[str, Attack],
    *,
    checkpoint: str = "last",
    n: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    stability_labels: str | None = None,
    device: str = "auto",
    store_path: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[dict[str, Any], dict[str, RobustnessResult]]:
    """Evaluate a run's checkpoint on its test set under ``attacks`` and record it in the store.

    Returns the JSON summary (point-wise worst case over the attacks, plus ``per_attack``) and
    the per-attack results.
    """
    config = run_dir.read_config()
    batch_size = batch_size or config.eval.batch_size
    torch_device = resolve_device(device)
    model, state = load_trained_model(run_dir, checkpoint, torch_device)
    data = load_data(config, torch_device)
    images, labels = data.test_x[:n], data.test_y[:n]
    stability_labels = stability_labels or config.eval.stability_labels
    seed_everything(seed)
    results: dict[str, RobustnessResult] = {}
    for name, attack in attacks.items():
        batches = (len(labels) + batch_size - 1) // batch_size
        with Progress(batches, f"{name:>6}", enabled=show_progress) as bar:
            results[name] = evaluate_robustness(
                model,
                images,
                labels,
                attack,
                batch_size=batch_size,
                stability_labels=stability_labels,
                progress=bar,
            )
    first = next(iter(attacks.values()))
    run_id = run_dir.run_id
    summary = {"run_id": run_id, **combine(results)}
    summary.update(
        {
            "attack": ",".join(attacks),
            "norm": first.norm,
            "eps": first.eps,
            "checkpoint": checkpoint,
            "epoch": state["epoch"],
            "stability_labels": stability_labels,
        }
    )
    if store_path is not None:
        store = ResultsStore(store_path)
        if not store.has_run(run_id):
            info = run_dir.read_info()
            store.upsert_run(
                run_id,
                run_dir.path.resolve(),
                config.to_dict(),
                status=info.get("status", "unknown"),
            )
        source = f"{checkpoint}@{state['epoch']}"
        summary["eval_id"] = store.add_evaluation(
            run_id, source, summary["attack"], first.norm, first.eps, summary
        )
    return summary, results


def combine(results: dict[str, RobustnessResult]) -> dict[str, Any]:
    """Point-wise worst case over several attacks: robust (stable) only if robust (stable) under all."""
    first = next(iter(results.values()))
    robust = torch.stack([r.robust for r in results.values()]).all(0)
    stable = torch.stack([r.stable for r in results.values()]).all(0)
    norms = torch.stack([r.perturbation_norm for r in results.values()])
    return {
        "natural_accuracy": first.natural_accuracy,
        "robust_accuracy": float(robust.float().mean()),
        "perturbation_stability": float(stable.float().mean()),
        "n": first.n,
        "mean_perturbation_norm": float(norms.mean()),
        "max_perturbation_norm": float(norms.max()),
        "seconds": sum(r.seconds for r in results.values()),
        "per_attack": {name: r.robust_accuracy for name, r in results.items()},
    }


register_command(
    "eval",
    "evaluate a trained run under attack (natural/robust accuracy, stability)",
    add_arguments,
    run,
)
