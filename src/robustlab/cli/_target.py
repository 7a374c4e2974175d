"""What the commands given a model TARGET share (``eval``, ``diagnose``): their arguments, the
model with its input normalization, the attacks the command line configures, and the data.

TARGET is a run directory, a robustlab checkpoint, a TorchScript file or ``module:function``
(:mod:`._sources`). A run's model brings its configuration: the dataset, and the evaluation
attack (``eval.*``) that options left unset default to; a model from outside a run needs
``--data`` (and a budget, ``--eps``, when it is attacked).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

from .._fraction import parse_number
from .._options import accepted_options
from .._threads import available_cores, resolve_threads, set_threads
from ..attacks import ATTACKS, Attack, create_attack
from ..config import NORMS, RunConfig, build_config, default_alpha
from ..data import ImageDataset
from ..errors import ConfigError
from ..training.runner import load_data
from ._common import add_threads_argument, checked_threads
from ._sources import LoadedModel, load_model, parse_model_args, with_normalization

# Command-line options that set attack constructor arguments: each flag sets the keyword of the
# same name (``--steps`` sets ``steps``), the one vocabulary every attack uses.
ATTACK_OPTIONS = ("steps", "restarts", "alpha", "queries", "targets", "version")
# ...except AutoAttack's ``version``: ``--version`` reads as the program's version.
OPTION_FLAGS = {**{o: f"--{o}" for o in ATTACK_OPTIONS}, "version": "--aa-version"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """TARGET, ``--model-arg``, ``--checkpoint``, ``--data``, ``--data-root``, ``--mean``,
    ``--std`` and ``--device``."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="run directory, robustlab checkpoint, TorchScript file, or module:function",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="model_args",
        help="keyword argument of a module:function model (repeatable), e.g. "
        "--model-arg model_name=Carmon2019Unlabeled; values are TOML or Python literals, else text",
    )
    parser.add_argument(
        "--checkpoint", default="last", help="for a run directory: last (default) or best"
    )
    parser.add_argument("--data", help="dataset of a model from outside a run (e.g. cifar10)")
    parser.add_argument(
        "--data-root",
        help="where the dataset files are (default: the run's data.root, else data)",
    )
    parser.add_argument(
        "--mean",
        help="per-channel mean, e.g. 0.4914,0.4822,0.4465, for a model expecting normalized input",
    )
    parser.add_argument("--std", help="per-channel std, with --mean")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_threads_argument(parser)


def add_attack_arguments(
    parser: argparse.ArgumentParser,
    *,
    eps_help: str = "budget, e.g. 8/255 (default: the run's eval.eps)",
    steps_help: str = "iterations (PGD default: the run's eval.steps; APGD/FAB: 100)",
) -> None:
    """``--attack``, ``--aa-version``, ``--eps``, ``--norm`` and the attack settings
    (:data:`ATTACK_OPTIONS`)."""
    parser.add_argument(
        "--attack",
        default="pgd",
        help=f"attack, or several joined by commas, run as a worst-case cascade; one of {', '.join(ATTACKS.names())}",
    )
    parser.add_argument(
        "--aa-version",
        dest="version",
        help="AutoAttack version: standard (default), plus, rand",
    )
    parser.add_argument("--eps", help=eps_help)
    parser.add_argument("--norm", help="Linf or L2 (default: the run's eval.norm)")
    parser.add_argument("--steps", type=int, help=steps_help)
    parser.add_argument("--alpha", help="PGD step size (default: 2.5 * eps / steps)")
    parser.add_argument("--restarts", type=int, help="random restarts")
    parser.add_argument("--queries", type=int, help="Square's query budget (default 5000)")
    parser.add_argument(
        "--targets", type=int, help="target classes of APGD-T/FAB-T (default 9; < classes)"
    )


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` (default: the run's ``eval.batch_size``) and ``--seed``."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (default: the run's eval.batch_size, else 500)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' randomness")


def check_counts(args: argparse.Namespace) -> None:
    """``--n`` and ``--batch-size``, when given, must be > 0 (one line otherwise)."""
    for flag in ("n", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}", value, "must be > 0")


def number(flag: str, text: str) -> float:
    """``"8/255"`` -> 0.0314 for the option ``flag``; a one-line :class:`ConfigError` otherwise."""
    try:
        return parse_number(text)
    except ValueError:
        raise ConfigError(
            flag, text, "expected a number (fractions such as 8/255 allowed)"
        ) from None


def floats(flag: str, text: str | None) -> list[float] | None:
    """``"0.1,8/255"`` -> ``[0.1, 0.0314]``; ``None`` for an option not given."""
    if text is None:
        return None
    return [number(flag, part) for part in text.split(",") if part.strip()]


def load_target(args: argparse.Namespace, device: torch.device) -> LoadedModel:
    """The model named on the command line, with ``--model-arg``, ``--checkpoint`` and the
    ``--mean``/``--std`` normalization applied (``--threads`` checked first)."""
    checked_threads(getattr(args, "threads", None))
    return with_normalization(
        load_model(args.model, args.checkpoint, device, parse_model_args(args.model_args)),
        floats("--mean", args.mean),
        floats("--std", args.std),
    )


def eval_batch_size(loaded: LoadedModel, requested: int | None) -> int:
    """``--batch-size`` as given, else the run's ``eval.batch_size``, else 500."""
    return requested or (loaded.config.eval.batch_size if loaded.config is not None else 500)


def set_target_threads(
    loaded: LoadedModel, threads: int | None, batch_size: int, device: torch.device
) -> int:
    """``--threads``: given, that count; 0 or not given, the rule of a training run
    (:mod:`robustlab._threads`) on the evaluation batch, when the checkpoint records the input
    shape (a TorchScript or ``module:function`` model keeps torch's default, every core)."""
    if threads or loaded.input_shape is None:
        return set_threads(threads or available_cores())
    return set_threads(
        resolve_threads(0, loaded.model, loaded.input_shape, batch_size, torch.device(device).type)
    )


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ConfigError("--norm", norm, f"one of {', '.join(NORMS)}")
    return norm


def norm_setting(args: argparse.Namespace, loaded: LoadedModel) -> str:
    """The threat model's norm: ``--norm``, else the run's ``eval.norm``, else Linf."""
    config = loaded.config
    return check_norm(args.norm or (config.eval.norm if config is not None else "Linf"))


def check_budget(eps: float, norm: str, given: Any) -> float:
    """``eps`` if it is a budget the threat model allows (``given``: as typed, for the message)."""
    if not eps >= 0:  # written so that NaN fails too
        raise ConfigError("--eps", given, "must be >= 0")
    if norm == "Linf" and eps > 1:
        raise ConfigError("--eps", given, "must be in [0, 1] for Linf on images in [0, 1]")
    return eps


def threat_model_settings(args: argparse.Namespace, loaded: LoadedModel) -> tuple[float, str]:
    """The budget and norm: the command line's, else the run's evaluation config."""
    config = loaded.config
    if args.eps is None and config is None:
        raise ConfigError(
            "--eps", None, "required for a model from outside a run, e.g. --eps 8/255"
        )
    eps = number("--eps", args.eps) if args.eps is not None else config.eval.eps
    norm = norm_setting(args, loaded)
    return check_budget(eps, norm, args.eps), norm


def build_attacks(
    args: argparse.Namespace,
    loaded: LoadedModel,
    *,
    eps: float | None = None,
    outside_run_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Attack]:
    """The attacks named by ``--attack``, with the command line's settings where they apply.

    PGD takes its defaults from the run's evaluation config (the per-epoch attack); every other
    attack keeps its published defaults unless an option overrides them.

    Args:
        eps: the budget, when the caller resolved it (default: :func:`threat_model_settings`).
        outside_run_defaults: per attack name, settings for a model from outside a run that the
            command line leaves unset (``diagnose`` runs PGD-20 there, as ``eval.steps``).
    """
    names = [n.strip() for n in args.attack.split(",") if n.strip()]
    if not names:
        raise ConfigError("--attack", args.attack, f"one or more of {', '.join(ATTACKS.names())}")
    if eps is None:
        eps, norm = threat_model_settings(args, loaded)
    else:
        norm = norm_setting(args, loaded)
    given = {
        option: getattr(args, option)
        for option in ATTACK_OPTIONS
        if getattr(args, option) is not None
    }
    for option in ("steps", "restarts", "queries", "targets"):
        if option in given and given[option] <= 0:
            raise ConfigError(f"--{option}", given[option], "must be > 0")
    if "alpha" in given:
        given["alpha"] = number("--alpha", given["alpha"])
    attacks: dict[str, Attack] = {}
    for name in names:
        accepted = set(accepted_options(ATTACKS.get(name)))
        kwargs: dict[str, Any] = {"eps": eps, "norm": norm}
        for option, value in given.items():
            if option in accepted:
                kwargs[option] = value
            elif len(names) == 1:
                raise ConfigError(OPTION_FLAGS[option], value, f"{name} takes no such setting")
        if name == "pgd" and loaded.config is not None:
            kwargs = {**run_pgd_settings(loaded, eps, kwargs), **kwargs}
        elif loaded.config is None and outside_run_defaults:
            kwargs = {**outside_run_defaults.get(name, {}), **kwargs}
        key = name if name not in attacks else f"{name}#{len(attacks)}"
        attacks[key] = create_attack(name, **kwargs)
    return attacks


def run_pgd_settings(loaded: LoadedModel, eps: float, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run's per-epoch PGD settings for what the command line leaves unset.

    The run's step size is kept only with its own budget and steps; otherwise Madry's rule.
    """
    ev = loaded.config.eval
    steps = kwargs.get("steps", ev.steps)
    alpha = ev.alpha if (eps, steps) == (ev.eps, ev.steps) else default_alpha(eps, steps)
    return {"steps": ev.steps, "restarts": ev.restarts, "alpha": alpha}


def data_config(loaded: LoadedModel, data: str | None, data_root: str | None) -> RunConfig:
    """The configuration that names the data: the run's (``--data-root`` moving its files), or
    for a model from outside a run, ``--data`` with its defaults and no validation split (the
    whole training set is the training split).

    Raises:
        ConfigError: no ``--data`` for a model from outside a run.
    """
    config = loaded.config
    if data is not None or config is None:
        if data is None:
            raise ConfigError(
                "--data", None, "required for a model from outside a run, e.g. --data cifar10"
            )
        overrides = [
            f"data.name={data}",
            "data.val_size=0",
            *([f"data.root={data_root}"] if data_root else []),
        ]
        return build_config(None, overrides)
    if data_root is not None:
        return build_config(None, [f"data.root={data_root}"], base=config.to_dict())
    return config


def load_dataset(config: RunConfig) -> ImageDataset:
    """The configured dataset and its validation split, on the CPU.

    Read on the CPU whatever the device (the training split of CIFAR holds 50,000 images
    against 10,000 test ones); callers move only the points they evaluate (:func:`points`).
    """
    return load_data(config, torch.device("cpu"))


def points(
    dataset: ImageDataset, split: str, n: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images and labels of ``split`` (``"train"`` or ``"test"``) on ``device``.

    ``"train"`` is the run's training split: the training set less the validation points.
    """
    images, labels = getattr(dataset, f"{split}_x"), getattr(dataset, f"{split}_y")
    return images[:n].to(device), labels[:n].to(device)


def load_test_points(
    config: RunConfig, n: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``n`` test images and labels on ``device``, and the number of classes.

    The dataset (training split included: 50,000 CIFAR images against 10,000 test ones) is
    read on the CPU; only the points evaluated are moved.
    """
    dataset = load_dataset(config)
    images, labels = points(dataset, "test", n, device)
    return images, labels, dataset.num_classes
