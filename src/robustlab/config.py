"""Typed run configuration: defaults <- TOML file <- ``--set key=value`` overrides.

A run is fully described by a :class:`RunConfig`. Every key is declared once here, with its
type, default, allowed values and a one-line description (the README's key table is generated
from these declarations by ``robustlab config --keys``). Unknown keys are rejected with a
"did you mean", wrong types and out-of-range values with one line naming the key, the value
and what is allowed, all before any work starts.

Budgets and step sizes accept fractions as papers write them: ``attack.eps = "8/255"``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._fraction import parse_number
from .errors import ConfigError, did_you_mean

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Check = tuple[Callable[[Any], bool], str]

DEVICES = ("auto", "cpu", "cuda")
FLOAT32_TINY = 2.0**-126  # float32's smallest normal number (torch.finfo(torch.float32).tiny)
NORMS = ("Linf", "L2")
BN_MODES = ("auto", "eval", "train")
STABILITY_LABELS = ("predicted", "true")


def key(
    default: Any, doc: str, check: Check | None = None, choices: Iterable[str] | str | None = None
) -> Any:
    """Declare a config key: its default, description, and range check or allowed names.

    ``choices`` is a tuple of names, or the name of a registry (``"models"``) looked up at
    validation time so that later issues' registrations are accepted without editing this file.
    """
    metadata = {"doc": doc, "check": check, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(v: Any) -> bool:
    return v is None or v > 0


def _non_negative(v: Any) -> bool:
    return v is None or v >= 0


POSITIVE: Check = (_positive, "must be > 0")
NON_NEGATIVE: Check = (_non_negative, "must be >= 0")
PROBABILITY: Check = (lambda v: v is None or 0 <= v <= 1, "must be in [0, 1]")
MOMENTUM: Check = (lambda v: 0 <= v < 1, "must be in [0, 1)")
VAL_SIZE: Check = (lambda v: v >= 0, "a count >= 0 or a fraction in [0, 1)")
OPEN_FRACTION: Check = (lambda v: 0 < v < 1, "must be in (0, 1)")


@dataclass
class DataConfig:
    name: str = key("digits", "dataset name", choices="datasets")
    root: str = key(
        "data", "directory holding the official dataset files (a run records it absolute)"
    )
    val_size: int | float = key(
        0.1,
        "held-out validation split from the training set: a count, or a fraction if < 1",
        VAL_SIZE,
    )
    train_size: int | float | None = key(
        None,
        "training points kept after the validation split: a count, or a fraction if < 1; a seeded class-stratified subset (Xing et al. Table 3: eps* against n; unset: all)",
        POSITIVE,
    )
    augment: str = key(
        "auto",
        "training augmentation: auto (the dataset's usual one), none, crop_flip, crop, random_resized_crop",
        choices="augmentations",
    )
    download: bool = key(False, "download missing files through torchvision (if installed)")
    options: dict[str, Any] = key(
        {}, "dataset-specific options (e.g. synthetic: n_train, image_size)"
    )
    extra: str = key(
        "",
        "extra pseudo-labelled training images mixed into every batch (Carmon et al. 2019's RST pickle: 'data' N x H x W x C uint8, 'extrapolated_targets'; a run records it absolute; empty: none)",
    )
    extra_fraction: float = key(
        0.5,
        "with data.extra: share of each training batch drawn from it (RST's unsup_fraction: 0.5)",
        (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    )


@dataclass
class ModelConfig:
    name: str = key("mlp", "model family", choices="models")
    width: int | float | None = key(
        None,
        "width knob: MLP units, LeNet/VGG factor, WRN widen factor, DenseNet growth rate, ResNet base channels (unset: family standard; fractions such as 0.5 for wrn, wrn_bottleneck, vgg)",
        POSITIVE,
    )
    depth: int | None = key(
        None, "depth (unset: family standard; fixed-depth families take none)", POSITIVE
    )
    normalize: bool = key(
        True, "put the dataset's per-channel mean/std normalization inside the model"
    )
    options: dict[str, Any] = key(
        {}, "family-specific options (e.g. resnet_cifar: batchnorm = false)"
    )


@dataclass
class MethodConfig:
    name: str = key("pgd_at", "training method", choices="methods")
    lam: float | None = key(
        None,
        "robust-regularization strength lambda (unset: the method's published default; with WAR its start, 0)",
        NON_NEGATIVE,
    )
    lam_schedule: str = key(
        "constant",
        "how lambda evolves: constant, or war (Wu et al. Algorithm 1, per iteration)",
        choices="lam_schedules",
    )
    zeta: float | None = key(
        None,
        "WAR's target ratio l_nat / l_rob (> 0; from `robustlab calibrate-war RUN_DIR`)",
        POSITIVE,
    )
    war_alpha: float = key(0.1, "WAR's step for lambda (Algorithm 1: 0.1)", POSITIVE)
    awp_base: str = key(
        "pgd_at", "awp: the method it wraps (pgd_at, gat, trades)", choices="methods"
    )
    awp_gamma: float | None = key(
        None,
        "awp: relative weight-perturbation size (unset: 0.01 for AT, 0.005 for TRADES)",
        NON_NEGATIVE,
    )
    awp_warmup: int | None = key(
        None, "awp: epochs before weights are perturbed (unset: the paper's)", NON_NEGATIVE
    )
    overfit_action: str = key(
        "stop",
        "fgsm_rs: on catastrophic overfitting, stop and restore the previous epoch (stop) or only flag it",
        choices=("stop", "flag"),
    )
    track_terms: bool = key(
        True,
        "also measure the objective's terms a method does not optimize (nat_risk, rob_reg every epoch)",
    )
    options: dict[str, Any] = key({}, "method-specific options (e.g. trades: detach_clean = true)")


@dataclass
class AttackConfig:
    norm: str = key("Linf", "threat model of the training attack", choices=NORMS)
    eps: float = key(0.2, "training attack budget (fractions such as 8/255 allowed)", NON_NEGATIVE)
    alpha: float | None = key(
        None, "PGD step size (unset: 2.5 * eps / steps, Madry et al.)", NON_NEGATIVE
    )
    steps: int = key(10, "PGD steps of the training attack", POSITIVE)
    random_start: bool = key(True, "start PGD from a uniform random point in the ball")
    loss: str = key("ce", "loss the training attack maximizes", choices="attack_losses")
    bn_mode: str = key(
        "auto",
        "batch-norm mode while crafting training attacks: auto (the method's reference code's, see README), eval or train",
        choices=BN_MODES,
    )
    eps_schedule: str = key(
        "constant",
        "training budget schedule (Liu et al. eq. 5): constant, linear or cosine warm-up",
        choices="eps_schedules",
    )
    eps_min: float = key(0.0, "eps schedule: value at the start of the warm-up (Liu et al.: 0)")
    eps_max: float | None = key(
        None,
        "eps schedule: value the formula reaches at eps_warmup, clipped to attack.eps (unset: 2 * eps, Liu et al.'s CIFAR setting)",
        NON_NEGATIVE,
    )
    eps_warmup: float | None = key(
        None,
        "eps schedule: warm-up period D in epochs (unset: half of train.epochs; scaled per PAS period)",
        POSITIVE,
    )


@dataclass
class EvalConfig:
    eps: float | None = key(None, "evaluation budget (unset: attack.eps)", NON_NEGATIVE)
    norm: str | None = key(None, "evaluation threat model (unset: attack.norm)", choices=NORMS)
    alpha: float | None = key(
        None, "evaluation PGD step size (unset: 2.5 * eps / steps)", NON_NEGATIVE
    )
    steps: int = key(20, "evaluation PGD steps", POSITIVE)
    restarts: int = key(1, "evaluation PGD random restarts (per-example worst case kept)", POSITIVE)
    n: int | None = key(None, "test points evaluated each epoch (unset: all)", POSITIVE)
    n_train: int = key(
        500,
        "training points evaluated each epoch for train_nat_acc/train_rob_acc (0: skip)",
        NON_NEGATIVE,
    )
    batch_size: int = key(512, "evaluation batch size", POSITIVE)
    stability_labels: str = key(
        "predicted",
        "attack each point's predicted label (exact eq. 3.1) or its true label",
        choices=STABILITY_LABELS,
    )
    every: int = key(1, "evaluate every this many epochs (the last epoch always)", POSITIVE)
    lipschitz_n: int = key(
        256,
        "training points for the per-epoch local Lipschitz estimate (Wu et al. 4.2; 0: skip)",
        NON_NEGATIVE,
    )
    final: bool = key(
        True, "evaluate the last, best and (PAS) ensemble models on the whole test set at the end"
    )
    select: str = key(
        "val_rob_acc",
        "per-epoch metric that picks the best checkpoint: val_rob_acc (largest), val_rob_loss, test_nat_loss or test_rob_loss (smallest; Xing et al.'s early stopping, but selecting on the test set biases its numbers: see README)",
        choices="selection_metrics",
    )


@dataclass
class TrainConfig:
    epochs: int = key(30, "training epochs", POSITIVE)
    batch_size: int = key(64, "training batch size", POSITIVE)
    optimizer: str = key("sgd", "optimizer", choices="optimizers")
    lr: float = key(0.05, "peak learning rate", POSITIVE)
    momentum: float = key(0.9, "SGD momentum", MOMENTUM)
    nesterov: bool = key(False, "Nesterov momentum")
    weight_decay: float = key(5e-4, "L2 weight decay", NON_NEGATIVE)
    schedule: str = key(
        "cosine", "learning-rate schedule, stepped per iteration", choices="schedules"
    )
    milestones: list[float] | None = key(
        None,
        "piecewise: epochs at which the LR is multiplied by gamma (unset: 50% and 75% of train.epochs)",
    )
    gamma: float = key(0.1, "piecewise: LR factor at each milestone", POSITIVE)
    cyclic_peak: float = key(
        0.4,
        "cyclic: fraction of the run at which the LR peaks (0.4: fast_adversarial's MNIST script; its CIFAR-10 script: 0.5)",
        OPEN_FRACTION,
    )
    warmup_epochs: float = key(0.0, "linear LR warm-up from 0 over this many epochs", NON_NEGATIVE)
    periods: list[float] = key(
        [],
        "PAS: epochs at which LR and eps schedules restart, a snapshot being kept at each period end (e.g. [100, 150])",
    )
    precision: str = key(
        "fp32",
        "training arithmetic: fp32, bf16 (autocast) or fp16 (autocast + gradient scaler); evaluation stays fp32",
        choices=("fp32", "bf16", "fp16"),
    )
    channels_last: bool = key(
        False, "channels-last memory format for convolutional models (faster on GPUs)"
    )
    compile: bool = key(False, "torch.compile the model for training (long runs on GPUs)")
    spectral_clip: float | None = key(
        None,
        "clip every conv's (exact operator at its input size) and linear layer's singular values to at most this C after training epochs (Wen et al. App. B.4.2; unset: off)",
        POSITIVE,
    )
    spectral_clip_every: int = key(
        1, "with spectral_clip: clip every this many epochs (the last always)", POSITIVE
    )
    sync_bn: bool = key(
        False,
        "under torchrun (DDP): batch-norm statistics of the global batch (SyncBatchNorm, CUDA only) instead of each process's shard",
    )
    track_every: int = key(
        0,
        "record the gradient norm, ‖θ − θ0‖, the batch's robust error and loss, λ and ε every this many iterations, and every iteration of the first and last 2,000 (iterations.jsonl; Liu et al. Figs. 1, 8; 0: off)",
        NON_NEGATIVE,
    )
    save_epochs: list[int] = key(
        [], "epochs whose checkpoints are kept beside last/best (checkpoints/epoch-N.pt)", POSITIVE
    )
    init_from: str = key(
        "",
        "start from another run's weights only (a checkpoint file, or a run directory: its last.pt; same architecture; a run records it absolute; empty: fresh)",
    )
    deterministic: bool = key(
        False,
        "bit-reproducible CUDA runs: cuDNN deterministic, no cuDNN benchmark, torch.use_deterministic_algorithms (slower; some ops raise; see README 'Reliability'); CPU runs are reproducible either way",
    )
    max_grad_norm: float | None = key(
        None,
        "clip the global L2 norm of the gradient to this, after fp16 unscaling (unset or 0: off)",
        NON_NEGATIVE,
    )
    grad_norm_limit: float | None = key(
        None,
        "a step whose gradient norm (before clipping) exceeds this is a fault, like a NaN loss: see on_nan (unset: off)",
        POSITIVE,
    )
    on_nan: str = key(
        "stop",
        "on a NaN or inf loss or a gradient norm above grad_norm_limit (checked at each epoch's end, before its checkpoint): stop (run failed, exit 3, last good checkpoint kept) or rollback (reload the previous epoch, LR x nan_lr_factor)",
        choices=("stop", "rollback"),
    )
    nan_lr_factor: float = key(
        0.5, "rollback: the LR is multiplied by this at each rollback", OPEN_FRACTION
    )
    nan_max_rollbacks: int = key(
        3, "rollback: at most this many rollbacks, then stop", NON_NEGATIVE
    )
    loggers: list[str] = key(
        [],
        "live logging of every per-epoch metric (and train.track_every's records) while training: tensorboard (RUN/tensorboard), wandb (RUN/wandb; WANDB_MODE=offline honoured); empty: none",
        choices="loggers",
    )


@dataclass
class RunConfig:
    """The whole description of a training run."""

    seed: int = key(0, "seed for initialization, shuffling, augmentation and attacks")
    device: str = key("auto", "auto (cuda if available), cpu or cuda", choices=DEVICES)
    threads: int = key(
        0,
        "CPU threads of torch (0: auto, one thread for small models and every core for large ones, by the FLOPs of a training batch; README: CPU speed)",
        NON_NEGATIVE,
    )
    tag: str = key("", "free-form label stored with the run (for sweeps and reports)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value


# ---------------------------------------------------------------------------------------------
# Loading and overriding


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a syntax error or missing file is a :class:`ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", str(path), "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"not valid TOML ({exc})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"attack.eps=8/255"`` -> ``("attack.eps", "8/255")``; values are TOML literals when they parse."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected KEY=VALUE, e.g. attack.eps=8/255")
    dotted, raw = text.split("=", 1)
    dotted, raw = dotted.strip(), raw.strip()
    if not dotted:
        raise ConfigError("--set", text, "expected KEY=VALUE, e.g. attack.eps=8/255")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word or a fraction: kept as text, coerced by the key's type
    return dotted, _Raw(value, raw)


class _Raw:
    """A ``--set`` value with the text the user typed (string keys take the text verbatim)."""

    __slots__ = ("raw", "value")

    def __init__(self, value: Any, raw: str) -> None:
        self.value, self.raw = value, raw


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a nested dict (a copy is returned)."""
    tree = _deep_copy(tree)
    for text in overrides:
        dotted, value = parse_override(text)
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(dotted, value.raw, f"{part!r} is not a table of keys")
            node = child
        node[parts[-1]] = value
    return tree


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def build_config(
    file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- ``base`` <- TOML ``file`` <- ``overrides``, validated and resolved.

    Raises:
        ConfigError: (or :class:`~robustlab.errors.UnknownNameError`) for the first bad key.
    """
    tree: dict[str, Any] = _deep_copy(base or {})
    if file is not None:
        tree = merge_tables(tree, load_toml(file))
    tree = apply_overrides(tree, overrides)
    config = from_dict(tree)
    validate(config)
    return resolve(config)


def merge_tables(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, table by table (nested mappings merge, any other
    value replaces); neither argument is changed. A config file over ``base``, a sweep's
    ``[base]`` and axes over its base file."""
    merged = dict(base)
    for name, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = merge_tables(merged[name], value)
        else:
            merged[name] = value
    return merged


def from_dict(tree: Mapping[str, Any], cls: type = RunConfig, prefix: str = "") -> Any:
    """Build a config dataclass from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if name not in fields:
            leaf = _first_leaf(value)
            if leaf is not None:  # an unknown table: name the key inside it, not a dict
                path, item = leaf
                raise ConfigError(
                    f"{dotted}.{path}", _plain(item), _unknown_table_hint(name, path, cls, prefix)
                )
            raise ConfigError(dotted, _plain(value), _unknown_key_hint(name, cls, prefix))
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    dotted,
                    _plain(value),
                    f"{dotted} is a table of keys ({_keys_of(annotation, dotted)})",
                )
            kwargs[name] = from_dict(value, annotation, f"{dotted}.")
        else:
            kwargs[name] = coerce(dotted, annotation, value)
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, _Raw):
        return value.raw
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _unknown_key_hint(name: str, cls: type, prefix: str) -> str:
    """'did you mean' for an unknown key: a near name in the same table, else a leaf elsewhere."""
    local = [f.name for f in dataclasses.fields(cls)]
    guess = did_you_mean(name, local)
    if guess:
        return f"unknown key; did you mean {prefix + guess!r}?"
    # A leaf name can live in several tables (attack.eps and eval.eps): suggest all of them.
    by_leaf: dict[str, list[str]] = {}
    for dotted in all_keys():
        by_leaf.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    guess = did_you_mean(name, by_leaf)
    if guess:
        return f"unknown key; did you mean {' or '.join(map(repr, by_leaf[guess]))}?"
    return f"unknown key; valid keys here: {_keys_of(cls, prefix.rstrip('.'))}"


def _first_leaf(value: Any) -> tuple[str, Any] | None:
    """``("eps", "0.1")`` for ``{"eps": "0.1"}`` (a table as ``--set atack.eps=0.1`` or a TOML
    ``[atack]`` makes it): the first key, dotted, and its value; None if not a table."""
    if not isinstance(value, Mapping) or not value:
        return None
    name, item = next(iter(value.items()))
    inner = _first_leaf(item)
    return (f"{name}.{inner[0]}", inner[1]) if inner is not None else (name, item)


def _unknown_table_hint(name: str, path: str, cls: type, prefix: str) -> str:
    """'did you mean' for a key under an unknown table: the same key under the nearest table."""
    hints = typing.get_type_hints(cls)
    tables = [
        f.name
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hints[f.name]) or typing.get_origin(hints[f.name]) is dict
    ]
    guess = did_you_mean(name, tables)
    if guess:
        return f"unknown table {prefix + name!r}; did you mean {prefix + guess + '.' + path!r}?"
    where = ", ".join(prefix + t for t in tables) or "none"
    return f"unknown table {prefix + name!r}; tables here: {where}"


def _keys_of(cls: type, dotted: str) -> str:
    prefix = f"{dotted}." if dotted else ""
    return ", ".join(prefix + f.name for f in dataclasses.fields(cls))


def coerce(dotted: str, annotation: Any, value: Any) -> Any:
    """Convert a TOML or ``--set`` value to the key's declared type, or raise :class:`ConfigError`."""
    raw = value.raw if isinstance(value, _Raw) else None
    plain = _typed(value)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if plain is None:
            return None
        if options == [int, float]:  # a count or a fraction (data.val_size)
            if isinstance(plain, int) and not isinstance(plain, bool):
                return plain
            return _to_float(dotted, plain, raw)
        return coerce(dotted, options[0], value)
    if annotation is bool:
        if isinstance(plain, bool):
            return plain
        raise ConfigError(dotted, _show(plain, raw), "expected true or false")
    if annotation is int:
        if isinstance(plain, int) and not isinstance(plain, bool):
            return plain
        raise ConfigError(dotted, _show(plain, raw), "expected an integer")
    if annotation is float:
        return _to_float(dotted, plain, raw)
    if annotation is str:
        if raw is not None:
            # --set model.name=wrn arrives as text whatever TOML makes of it (tag=123 is "123"),
            # but a quoted TOML string (tag="a b", as describe_keys shows defaults) loses its quotes.
            return plain if isinstance(plain, str) else raw
        if isinstance(plain, str):
            return plain
        raise ConfigError(dotted, plain, "expected a string")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(plain, str) and raw is not None:
            # not a TOML array ("75,90", or "[10, 8/255]" holding a fraction): split the text
            plain = _split_list(dotted, plain)
        if not isinstance(plain, list):
            raise ConfigError(dotted, _show(plain, raw), "expected a list, e.g. [75, 90]")
        return [coerce(f"{dotted}[{i}]", item, v) for i, v in enumerate(plain)]
    if origin is dict:
        if not isinstance(plain, Mapping):
            raise ConfigError(dotted, _show(plain, raw), "expected a table of options")
        for name, item in plain.items():
            if isinstance(item, Mapping):  # options are flat: a nested table could not be saved
                raise ConfigError(
                    f"{dotted}.{name}", item, "expected a number, string, boolean or list"
                )
        return dict(plain)
    raise TypeError(
        f"unsupported config annotation {annotation!r} for {dotted}"
    )  # programming error


def _split_list(dotted: str, text: str) -> list[str]:
    """The items of a ``--set`` list TOML cannot read because an item is a fraction
    (``[10, 8/255]``) or the brackets are left out (``75,90``). A malformed list (``[10,``,
    ``[10,,20]``) is refused rather than read as the items that happen to parse."""
    body = text.strip()
    bracketed = body.startswith("[")
    malformed = "malformed list; expected e.g. [75, 90] or 75,90"
    if bracketed != body.endswith("]") or body.count("[") + body.count("]") != 2 * bracketed:
        raise ConfigError(dotted, text, malformed)
    parts = [part.strip() for part in (body[1:-1] if bracketed else body).split(",")]
    if bracketed and len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing comma, as TOML allows
    if parts == [""]:
        return []
    if "" in parts:
        raise ConfigError(dotted, text, f"{malformed} (an empty item)")
    return parts


def _typed(value: Any) -> Any:
    """``value`` with every ``--set`` wrapper, however deep (``model.options.a.b=1``), unwrapped."""
    if isinstance(value, _Raw):
        return value.value
    if isinstance(value, Mapping):
        return {k: _typed(v) for k, v in value.items()}
    return value


def _show(plain: Any, raw: str | None) -> Any:
    return raw if raw is not None else plain


def _to_float(dotted: str, plain: Any, raw: str | None) -> float:
    if isinstance(plain, bool):
        raise ConfigError(
            dotted, _show(plain, raw), "expected a number (fractions such as 8/255 allowed)"
        )
    if isinstance(plain, int | float):
        number = float(plain)
    elif isinstance(plain, str):
        try:
            number = parse_number(plain)
        except ValueError:
            raise ConfigError(
                dotted, _show(plain, raw), "expected a number (fractions such as 8/255 allowed)"
            ) from None
    else:
        raise ConfigError(
            dotted, _show(plain, raw), "expected a number (fractions such as 8/255 allowed)"
        )
    if not math.isfinite(number):
        raise ConfigError(dotted, _show(plain, raw), "expected a finite number")
    return number


# ---------------------------------------------------------------------------------------------
# Validation and resolution


# Registry-backed keys: the registry's module and how to read its names. Imported lazily, on
# first validation, because they pull in torch.
_REGISTRY_NAMES: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "models": (".models", lambda m: m.list_models()),
    "datasets": (".data", lambda m: m.list_datasets()),
    "augmentations": (".data", lambda m: ["auto", *m.AUGMENTATIONS.names()]),
    "methods": (".training", lambda m: m.list_methods()),
    "schedules": (".training.schedules", lambda m: m.list_schedules()),
    "lam_schedules": (".training.lam_schedules", lambda m: m.LAMBDA_SCHEDULES.names()),
    "eps_schedules": (".training.eps_schedules", lambda m: m.list_eps_schedules()),
    "optimizers": (".training.optim", lambda m: m.OPTIMIZERS.names()),
    "attack_losses": (".attacks.functional", lambda m: m.LOSSES.names()),
    "selection_metrics": (".training.runner", lambda m: list(m.SELECTION_RULES)),
    "loggers": (".training.loggers", lambda m: m.list_loggers()),
}


def _registry_names(kind: str) -> list[str]:
    """Names accepted for a registry-backed key."""
    module, names = _REGISTRY_NAMES[kind]
    return names(importlib.import_module(module, __package__))


def iter_keys(
    cls: type = RunConfig, prefix: str = ""
) -> Iterable[tuple[str, dataclasses.Field, Any]]:
    """Every leaf key as ``(dotted name, field, annotation)``, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            yield from iter_keys(annotation, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, annotation


def all_keys() -> list[str]:
    return [dotted for dotted, _, _ in iter_keys()]


def validate(config: RunConfig) -> None:
    """Range and name checks on every key, then the checks that involve several keys."""
    from .errors import UnknownNameError

    for dotted, f, _ in iter_keys():
        value = config.get(dotted)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            values = value if isinstance(value, list) else [value]
            predicate, allowed = check
            for item in values:
                if not predicate(item):
                    raise ConfigError(dotted, value, allowed)
        choices = f.metadata.get("choices")
        if choices is not None and value is not None:
            names = _registry_names(choices) if isinstance(choices, str) else list(choices)
            for item in value if isinstance(value, list) else [value]:  # train.loggers: a list
                if item not in names:
                    raise UnknownNameError(dotted, item, names)
    for dotted in ("attack", "eval"):
        norm = config.get(f"{dotted}.norm") or config.attack.norm
        eps = config.get(f"{dotted}.eps")
        # An unset eval.eps takes attack.eps, under eval.norm: an L2 training budget > 1 with
        # eval.norm = "Linf" is refused here, not after resolve() (found by the config
        # round-trip property test: such a config saved and read back was refused).
        inherited = eps is None and dotted == "eval"
        if inherited:
            eps = config.attack.eps
        if eps is not None and norm == "Linf" and eps > 1:
            raise ConfigError(
                f"{dotted}.eps",
                eps,
                "must be in [0, 1] for Linf on images in [0, 1]"
                + ("; unset, it takes attack.eps: set eval.eps" if inherited else ""),
            )
        if eps is not None and 0 < eps < FLOAT32_TINY:
            # Found by the config round-trip property test: a subnormal budget's step
            # (2.5 * eps / steps) underflows to 0, and the saved config no longer read back.
            raise ConfigError(
                f"{dotted}.eps",
                eps,
                f"0, or >= {FLOAT32_TINY:.4g} (smaller budgets move no float32 pixel)",
            )
        # A step of 0 is what the step rule resolves a budget of 0 to (a clean run's saved
        # config must read back); with a budget > 0 it is a mistake.
        alpha = config.get(f"{dotted}.alpha")
        budget = eps if eps is not None else config.attack.eps
        if alpha == 0 and budget > 0:
            raise ConfigError(f"{dotted}.alpha", alpha, "must be > 0 (0 only with a budget of 0)")
    for epoch in config.train.save_epochs:
        if epoch > config.train.epochs:
            raise ConfigError(
                "train.save_epochs",
                config.train.save_epochs,
                f"epochs in [1, train.epochs={config.train.epochs}]",
            )
    if config.train.milestones is not None:
        for m in config.train.milestones:
            if not 0 <= m <= config.train.epochs:
                raise ConfigError(
                    "train.milestones",
                    config.train.milestones,
                    f"epochs in [0, train.epochs={config.train.epochs}]",
                )
    validate_schedules(config)
    if config.train.loggers:  # a missing optional package, before the run starts
        from .training.loggers import check_loggers

        check_loggers(config.train.loggers)
    clip, limit = config.train.max_grad_norm, config.train.grad_norm_limit
    if clip and limit is not None and limit <= clip:
        raise ConfigError(
            "train.grad_norm_limit",
            limit,
            f"must be > train.max_grad_norm={clip} (the guard sees the norm before clipping)",
        )
    train_size = config.data.train_size
    if isinstance(train_size, float) and train_size >= 1:
        raise ConfigError(
            "data.train_size", train_size, "a count (integer) or a fraction in (0, 1)"
        )
    if isinstance(config.data.val_size, float) and config.data.val_size >= 1:
        raise ConfigError(
            "data.val_size", config.data.val_size, "a count (integer) or a fraction in [0, 1)"
        )


# Methods WAR adapts λ for (Wu et al. use it on TRADES, generalized AT and AWP).
WAR_METHODS = ("gat", "trades", "awp", "mart")


def validate_schedules(config: RunConfig) -> None:
    """The checks that involve the method's, λ's, ε's and the periods' keys together."""
    method, attack, train = config.method, config.attack, config.train
    if method.lam_schedule == "war":
        if method.name not in WAR_METHODS:
            raise ConfigError(
                "method.lam_schedule",
                "war",
                f"WAR adapts the λ of {', '.join(WAR_METHODS)}; method.name is {method.name!r}",
            )
        if method.zeta is None:
            raise ConfigError(
                "method.zeta",
                None,
                "WAR needs a ratio ζ > 0 (from `robustlab calibrate-war RUN_DIR`)",
            )
    eps_max = attack.eps_max if attack.eps_max is not None else 2 * attack.eps
    if attack.eps_schedule != "constant" and eps_max < attack.eps_min:
        raise ConfigError(
            "attack.eps_max", eps_max, f"must be >= attack.eps_min ({attack.eps_min})"
        )
    previous = 0.0
    for boundary in train.periods:
        if not previous < boundary < train.epochs:
            raise ConfigError(
                "train.periods",
                train.periods,
                f"increasing epochs strictly between 0 and train.epochs ({train.epochs})",
            )
        previous = boundary
    for key_name in ("awp_gamma", "awp_warmup"):
        if getattr(method, key_name) is not None and method.name != "awp":
            raise ConfigError(
                f"method.{key_name}",
                getattr(method, key_name),
                "applies to method.name = 'awp' only",
            )
    if method.name == "awp" and method.awp_base in ("awp", "clean"):
        raise ConfigError(
            "method.awp_base",
            method.awp_base,
            "an adversarial method to wrap: pgd_at, gat, trades, ...",
        )


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s step-size rule, 2.5 * eps / steps (2/255 for eps 8/255 and 10 steps)."""
    return 2.5 * eps / steps


def resolve(config: RunConfig) -> RunConfig:
    """Fill the keys whose defaults derive from others, so the saved config is explicit."""
    from .training import METHODS

    method_cls = (
        METHODS.get(config.method.name)
        if config.method.name in _registry_names("methods")
        else None
    )
    alpha_rule = (
        method_cls.step_size_rule({"base": config.method.awp_base})
        if method_cls is not None
        else (lambda eps, steps, norm: default_alpha(eps, steps))
    )
    bn_mode = config.attack.bn_mode
    if bn_mode == "auto" and method_cls is not None:
        # The batch-norm mode the method's reference code crafts in (README: "Training methods").
        bn_mode = method_cls.bn_mode_rule({"base": config.method.awp_base})
    attack = dataclasses.replace(
        config.attack,
        bn_mode=bn_mode,
        alpha=config.attack.alpha
        if config.attack.alpha is not None
        else alpha_rule(config.attack.eps, config.attack.steps, config.attack.norm),
        eps_max=config.attack.eps_max
        if config.attack.eps_max is not None
        else 2 * config.attack.eps,
        eps_warmup=config.attack.eps_warmup
        if config.attack.eps_warmup is not None
        else config.train.epochs / 2,
    )
    eval_eps = config.eval.eps if config.eval.eps is not None else attack.eps
    evaluation = dataclasses.replace(
        config.eval,
        eps=eval_eps,
        norm=config.eval.norm or attack.norm,
        alpha=config.eval.alpha
        if config.eval.alpha is not None
        else default_alpha(eval_eps, config.eval.steps),
    )
    train = config.train
    if train.milestones is None:
        train = dataclasses.replace(train, milestones=[0.5 * train.epochs, 0.75 * train.epochs])
    model = config.model
    if model.name in _registry_names("models"):
        from .models import family_spec, normalize_width

        spec = family_spec(model.name)
        model = dataclasses.replace(
            model,
            # 10.0 (a TOML float, a sweep axis) is saved and named as the 10 it is.
            width=spec.default_width if model.width is None else normalize_width(model.width),
            depth=spec.default_depth if model.depth is None else model.depth,
        )
    method = config.method
    if method.lam is None:
        from .training import method_default_lam

        # WAR starts from λ_0 = 0 (Algorithm 1) unless a start is given.
        start = 0.0 if method.lam_schedule == "war" else method_default_lam(method.name)
        method = dataclasses.replace(method, lam=start)
    return dataclasses.replace(
        config, model=model, attack=attack, eval=evaluation, train=train, method=method
    )


# ---------------------------------------------------------------------------------------------
# Writing


def to_toml(config: RunConfig) -> str:
    """Render a config as TOML (``None`` values are omitted: TOML has no null)."""
    lines: list[str] = []
    tree = config.to_dict()
    tables: list[tuple[str, dict[str, Any]]] = []
    for name, value in tree.items():
        if isinstance(value, dict):
            tables.append((name, value))
        elif value is not None:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        subtables = []
        for sub, value in table.items():
            if isinstance(value, dict):
                subtables.append((sub, value))
            elif value is not None:
                lines.append(f"{sub} = {_toml_value(value)}")
        for sub, value in subtables:
            lines.append(f"\n[{name}.{sub}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines) + "\n"


_TOML_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        # TOML basic strings cannot hold raw control characters (a tag with a newline).
        escaped = _TOML_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def describe_keys() -> list[tuple[str, str, str]]:
    """``(key, default, description)`` for every key, for ``robustlab config --keys`` and the README."""
    rows = []
    defaults = RunConfig()
    for dotted, f, _ in iter_keys():
        default = defaults.get(dotted)
        rows.append(
            (
                dotted,
                "unset"
                if default is None
                else _toml_value(default)
                if not isinstance(default, dict)
                else "{}",
                f.metadata.get("doc", ""),
            )
        )
    return rows
