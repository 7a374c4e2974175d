"""``robustlab eval MODEL [--attack NAME[,NAME...]] [--eps 8/255] [--norm Linf] [--n N] [--json]``

MODEL is a run directory, a robustlab checkpoint, a TorchScript file, or ``module:function``
returning a ``torch.nn.Module``. Several attacks (or ``autoattack``) run as a worst-case cascade.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..attacks import Attack, model_mode
from ..evaluation import STABILITY_LABELS, RobustnessResult, evaluate_robustness, expand_attacks
from ..evaluation.cascade import check_state_file
from ..evaluation.checks import (
    check_black_box_gap,
    check_train_mode,
    flags_as_dicts,
    run_pre_checks,
)
from ..progress import Progress
from ..report import attack_settings, render_table
from ..store import ResultsStore
from ..store.sqlite import check_store_location
from ..training.checkpoint import save_torch_file, seed_everything
from ..training.runner import resolve_device
from ._common import add_store_argument, emit_json, info, register_command, store_for
from ._sources import LoadedModel, check_fits
from ._target import (  # noqa: F401  (ATTACK_OPTIONS, OPTION_FLAGS, build_attacks: re-exported)
    ATTACK_OPTIONS,
    OPTION_FLAGS,
    add_attack_arguments,
    add_batch_arguments,
    add_model_arguments,
    build_attacks,
    check_counts,
    data_config,
    eval_batch_size,
    load_target,
    load_test_points,
    set_target_threads,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_attack_arguments(parser)
    parser.add_argument("--n", type=int, help="evaluate the first N test points (default: all)")
    add_batch_arguments(parser)
    parser.add_argument(
        "--stability-labels",
        choices=STABILITY_LABELS,
        default=None,
        help="attack the predicted (default) or the true label",
    )
    parser.add_argument(
        "--save-adv", metavar="PATH", help="save the adversarial examples (torch.save of a dict)"
    )
    parser.add_argument(
        "--state",
        metavar="PATH",
        help="save the cascade state there as it goes, and resume from it if it exists",
    )
    add_store_argument(parser, of_run=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet or args.json
    check_counts(args)
    device = resolve_device(args.device, "--device")
    loaded = load_target(args, device)
    set_target_threads(loaded, args.threads, eval_batch_size(loaded, args.batch_size), device)
    attacks = build_attacks(args, loaded)
    # a run's evaluations go to the store it recorded, wherever eval is started from
    store_path = store_for(args.store, loaded.run_dir)
    check_store_location(store_path, create=True)  # refused before the work, not after it
    summary, result = evaluate_model(
        loaded,
        attacks,
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        stability_labels=args.stability_labels,
        data=args.data,
        data_root=args.data_root,
        device=device,
        store_path=store_path,
        save_adv=args.save_adv,
        state_path=args.state,
        show_progress=not quiet,
        announce=None if args.json else info,
    )
    if args.json:
        emit_json(summary)
        return 0
    for flag in summary["flags"]:
        info(f"warning [{flag['code']}]: {flag['message']}")
    print(result_table(result))
    print(
        f"perturbation norm ({summary['norm']}, eps {summary['eps']:.4g}): "
        f"mean {summary['mean_perturbation_norm']:.4g}, max {summary['max_perturbation_norm']:.4g}"
    )
    if "queries" in summary:
        print(
            f"Square queries per attacked point: mean {summary['queries']['mean']:.0f}, median {summary['queries']['median']:.0f}"
        )
    return 0


def result_table(result: RobustnessResult) -> str:
    """Natural accuracy and loss, then robust accuracy and stability after each attack of the
    cascade, and overall the robust loss (mean CE against the true labels at the adversarial
    examples kept; not tracked per attack, so those rows show '-')."""
    rows = [["(natural)", result.natural_accuracy, None, result.natural_loss, None]]
    rows += [
        [
            name,
            result.per_attack[name],
            result.per_attack_stability[name],
            None,
            result.attack_seconds.get(name),
        ]
        for name in result.per_attack
    ]
    rows.append(
        [
            "overall",
            result.robust_accuracy,
            result.perturbation_stability,
            result.robust_loss,
            result.seconds,
        ]
    )
    return render_table(
        ["attack", "robust acc", "stability", "CE loss", "seconds"],
        rows,
        ["auto", "pct", "pct", "auto", "seconds"],
    )


def evaluate_model(
    loaded: LoadedModel,
    attacks: dict[str, Attack],
    *,
    n: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    stability_labels: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    device: torch.device | str = "cpu",
    store_path: str | Path | None = None,
    save_adv: str | Path | None = None,
    state_path: str | Path | None = None,
    show_progress: bool = False,
    announce: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], RobustnessResult]:
    """Check, attack and record one model on its test set.

    Only the evaluated test points go to ``device``; the dataset is read on the CPU.
    ``announce`` is given one line naming the model, data, attacks, threat model and number
    of points before the work starts (:func:`evaluation_header`).

    Returns the JSON summary (the point-wise worst case over the attacks, ``per_attack``,
    ``flags``...) and the full result.

    Raises:
        ConfigError: the model does not take the data's inputs or returns other than
            (N, classes) logits (:func:`~robustlab.cli._sources.check_fits`).
        RunError: ``state_path`` holds a state of another model, data, attacks or seed.
    """
    config = data_config(loaded, data, data_root)
    batch_size = eval_batch_size(loaded, batch_size)
    torch_device = torch.device(device)
    images, labels, num_classes = load_test_points(config, n, torch_device)
    stability_labels = stability_labels or (
        loaded.config.eval.stability_labels if loaded.config else "predicted"
    )
    model = loaded.model.to(torch_device)
    flags = [check_train_mode(model)]
    sample = images[: min(batch_size, 256)]
    sample_x = sample.float().div(255) if sample.dtype == torch.uint8 else sample
    check_fits(loaded, sample_x, num_classes, config.data.name)
    stages = expand_attacks(attacks)
    check_state_file(state_path, model, images, labels, stages, stability_labels, seed)
    if announce is not None:
        announce(evaluation_header(loaded, config.data.name, stages, len(labels)))
    seed_everything(seed)
    with model_mode(model, "eval"):
        flags += run_pre_checks(model, sample_x, labels[: len(sample)])
    seed_everything(seed)
    total = len(stages) * -(-len(labels) // batch_size)
    with Progress(total, "eval", enabled=show_progress) as bar:
        result = evaluate_robustness(
            model,
            images,
            labels,
            stages,
            batch_size=batch_size,
            stability_labels=stability_labels,
            progress=bar,
            keep_adv=save_adv is not None,
            state_path=state_path,
            seed=seed,
        )
    flags.append(check_black_box_gap(result.per_attack))
    result.flags = flags_as_dicts(flags)
    first = next(iter(stages.values()))
    run_id = loaded.run_dir.run_id if loaded.run_dir is not None else None
    summary = {"run_id": run_id, "source": loaded.source, **result.summary()}
    summary.update(
        {
            "attack": ",".join(attacks),
            # What the number measured, for the labels of `show` and `runs` (report.labels).
            "attack_settings": attack_settings(attacks),
            "split": "test" if n is None or len(labels) < n else f"test[:{len(labels)}]",
            "norm": first.norm,
            "eps": first.eps,
            "epoch": loaded.epoch,
            "stability_labels": stability_labels,
            "seed": seed,
            "data": config.data.name,
        }
    )
    if save_adv is not None:
        _save_adversarial(save_adv, result, images, labels, summary)
        summary["saved_adv"] = str(save_adv)
    if store_path is not None:
        store = ResultsStore(store_path)
        if run_id is not None and not store.has_run(run_id):
            status = loaded.run_dir.read_info().get("status", "unknown")
            store.upsert_run(
                run_id, loaded.run_dir.path.resolve(), loaded.config.to_dict(), status=status
            )
        summary["eval_id"] = store.add_evaluation(
            run_id, loaded.source, summary["attack"], first.norm, first.eps, summary
        )
    return summary, result


def evaluation_header(loaded: LoadedModel, data: str, stages: dict[str, Attack], n: int) -> str:
    """One line saying what is about to be evaluated, printed before the work starts:
    ``run RUN_ID last@30 on cifar10 (1000 test points): apgd-ce, apgd-t, fab-t, square at Linf
    eps 0.03137``."""
    first = next(iter(stages.values()))
    model = f"run {loaded.run_dir.run_id} {loaded.source}" if loaded.run_dir else loaded.source
    return (
        f"{model} on {data} ({n} test points): {', '.join(stages)} "
        f"at {first.norm} eps {first.eps:.4g}"
    )


def _save_adversarial(
    path: str | Path,
    result: RobustnessResult,
    images: torch.Tensor,
    labels: torch.Tensor,
    summary: dict[str, Any],
) -> None:
    """The adversarial examples with their labels and flags, written atomically."""
    payload = {
        "x_adv": result.x_adv,
        "y": labels.cpu(),
        "adv_prediction": result.adv_prediction,
        "robust": result.robust,
        "stable": result.stable,
        "attack": summary["attack"],
        "eps": summary["eps"],
        "norm": summary["norm"],
    }
    save_torch_file(path, payload)


register_command(
    "eval",
    "evaluate a model under attack (natural/robust accuracy, stability, sanity flags)",
    add_arguments,
    run,
)
