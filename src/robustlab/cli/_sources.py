"""Where ``robustlab eval`` gets a model: a run directory, a checkpoint, TorchScript, or code.

Each source is one loader in :data:`MODEL_SOURCES`, tried in order; the first whose ``matches``
accepts the reference loads it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import model_mode
from ..config import RunConfig, build_config
from ..errors import CheckpointError, ConfigError, RunError
from ..models import NormalizedModel
from ..rundir import RunDirectory
from ..training.checkpoint import is_robustlab_checkpoint, load_checkpoint
from ..training.runner import build_model, load_trained_model

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class LoadedModel:
    """A model to evaluate and what is known about it.

    Attributes:
        model: the classifier (inputs in [0, 1]).
        source: a description for the store (``run:last@30``, a path, ``module:function``).
        config: the run configuration, when the model comes from a run (names its dataset).
        run_dir: the run directory, when there is one.
        epoch: the checkpoint's epoch, when known.
        normalizes: whether the model normalizes its inputs itself (``--mean/--std`` then refused).
        input_shape: one input's (C, H, W), when a checkpoint records it (for ``--threads 0``).
    """

    model: nn.Module
    source: str
    config: RunConfig | None = None
    run_dir: RunDirectory | None = None
    epoch: int | None = None
    normalizes: bool = False
    input_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ModelSource:
    """One kind of model reference: whether ``ref`` is one, and how to load it with the
    ``--checkpoint`` choice, the device and the ``--model-arg`` keywords (only sources with
    ``takes_args`` accept any)."""

    name: str
    matches: Callable[[str], bool]
    load: Callable[[str, str, torch.device, dict[str, Any]], LoadedModel]
    takes_args: bool = False


def _is_run_dir(ref: str) -> bool:
    return Path(ref).is_dir()  # any directory: RunDirectory.open says what a run directory needs


def _load_run(
    ref: str, checkpoint: str, device: torch.device, model_args: dict[str, Any]
) -> LoadedModel:
    run = RunDirectory.open(ref)
    model, state = load_trained_model(run, checkpoint, device)
    return LoadedModel(
        model,
        f"{checkpoint}@{state['epoch']}",
        run.read_config(),
        run,
        state["epoch"],
        normalizes=True,
        input_shape=_input_shape(state),
    )


def _input_shape(state: dict[str, Any]) -> tuple[int, int, int] | None:
    """One input's (C, H, W) from a checkpoint's model spec."""
    spec = state.get("model_spec") or {}
    if spec.get("in_channels") is None or spec.get("image_size") is None:
        return None
    return (int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"]))


def _load_checkpoint(
    ref: str, checkpoint: str, device: torch.device, model_args: dict[str, Any]
) -> LoadedModel:
    # Read onto the CPU: a last.pt also holds the optimizer's state (twice the weights for
    # momentum SGD, three times for Adam), of which only the weights go to the device.
    state = load_checkpoint(ref, map_location="cpu")
    if "model_spec" not in state:
        raise CheckpointError(f"checkpoint {ref!r} holds no model (model_spec missing)")
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    config = build_config(base=state["config"]) if "config" in state else None
    path = Path(ref).resolve()
    run_dir = (
        RunDirectory(path.parent.parent) if (path.parent.parent / "run.json").is_file() else None
    )
    return LoadedModel(
        model,
        str(ref),
        config,
        run_dir,
        state.get("epoch"),
        normalizes=True,
        input_shape=_input_shape(state),
    )


def _is_torchscript(ref: str) -> bool:
    path = Path(ref)
    return path.is_file() and not is_robustlab_checkpoint(path)


def _load_torchscript(
    ref: str, checkpoint: str, device: torch.device, model_args: dict[str, Any]
) -> LoadedModel:
    try:
        with (
            warnings.catch_warnings()
        ):  # deprecated in favour of torch.export, still the common format
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(ref, map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{ref!r} is neither a robustlab checkpoint nor a TorchScript file ({str(exc).splitlines()[0]})"
        ) from None
    return LoadedModel(model, str(ref))


def _is_code(ref: str) -> bool:
    return ":" in ref and not Path(ref).exists()


def _load_code(
    ref: str, checkpoint: str, device: torch.device, model_args: dict[str, Any]
) -> LoadedModel:
    module_name, _, function_name = ref.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("model", ref, f"cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError("model", ref, f"{module_name!r} has no function {function_name!r}")
    _check_arguments(factory, function_name, model_args)
    model = factory(**model_args)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            "model",
            ref,
            f"{function_name}() must return a torch.nn.Module, got {type(model).__name__}",
        )
    call = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    return LoadedModel(model.to(device), f"{ref}({call})" if model_args else ref)


def _check_arguments(factory: Callable[..., Any], name: str, model_args: dict[str, Any]) -> None:
    """Refuse keywords the function does not take before calling it: a TypeError from inside
    the user's function is a bug of theirs to see whole, this one is a typo on the command line."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C function: let the call decide
        return
    params = signature.parameters.values()
    takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    hint = f"(it takes: {', '.join(takes) or 'no arguments'})"
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        for key, value in model_args.items():
            if key not in takes:
                raise ConfigError(
                    "--model-arg", f"{key}={value!r}", f"{name}() takes no argument {key!r} {hint}"
                )
    try:
        signature.bind(**model_args)
    except TypeError as exc:  # a required argument is missing
        given = ", ".join(f"{k}={v!r}" for k, v in model_args.items()) or None
        raise ConfigError("--model-arg", given, f"{name}() {exc} {hint}") from None


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["model_name=Carmon2019Unlabeled", "depth=28"]`` -> ``{"model_name": "Carmon2019Unlabeled",
    "depth": 28}``.

    A value is a TOML literal when it parses as one (``28``, ``0.5``, ``true``, ``"text"``,
    ``[1, 2]``), else a Python literal (``None``, ``True``, ``(3, 32, 32)``), else the text itself,
    so bare names need no quotes.
    """
    args: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                "--model-arg", item, "expected KEY=VALUE with KEY a Python name, e.g. depth=28"
            )
        if key in args:
            raise ConfigError("--model-arg", item, f"{key} given twice")
        args[key] = _literal(raw)
    return args


def _literal(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


MODEL_SOURCES = (
    ModelSource("run directory", _is_run_dir, _load_run),
    ModelSource(
        "robustlab checkpoint",
        lambda ref: Path(ref).is_file() and is_robustlab_checkpoint(Path(ref)),
        _load_checkpoint,
    ),
    ModelSource("TorchScript file", _is_torchscript, _load_torchscript),
    ModelSource("module:function", _is_code, _load_code, takes_args=True),
)


def load_model(
    ref: str,
    checkpoint: str,
    device: torch.device,
    model_args: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load the model ``ref`` names, trying each source in turn.

    Args:
        model_args: keyword arguments of a ``module:function`` model (``--model-arg``).

    Raises:
        RunError: nothing at ``ref`` is a model (the message lists what is accepted).
        ConfigError: ``model_args`` for a source that takes none, or that the function does
            not take.
    """
    model_args = dict(model_args or {})
    for source in MODEL_SOURCES:
        if source.matches(ref):
            if model_args and not source.takes_args:
                raise ConfigError(
                    "--model-arg",
                    next(iter(model_args)),
                    f"only a module:function model takes arguments, and {ref!r} is a {source.name}",
                )
            return source.load(ref, checkpoint, device, model_args)
    raise RunError(
        f"model {ref!r}: not found; expected a run directory, a robustlab checkpoint, a TorchScript "
        "file, or module:function returning a torch.nn.Module"
    )


def with_normalization(
    loaded: LoadedModel, mean: list[float] | None, std: list[float] | None
) -> LoadedModel:
    """Prepend per-channel normalization for models that expect normalized inputs."""
    if mean is None and std is None:
        return loaded
    if loaded.normalizes:
        raise ConfigError(
            "--mean", mean, "this model normalizes its inputs itself; drop --mean/--std"
        )
    if mean is None or std is None or len(mean) != len(std):
        raise ConfigError(
            "--std" if mean is not None else "--mean",
            std if mean is not None else mean,
            "give --mean and --std with one value per channel each",
        )
    if any(s <= 0 for s in std):
        raise ConfigError("--std", std, "values must be > 0")
    inner = loaded.model
    device = next(iter(inner.parameters()), torch.empty(0)).device
    wrapped = NormalizedModel(inner, mean, std).to(device)
    # The wrapper takes the inner model's mode, so the train-mode check still sees the user's.
    wrapped.training = wrapped.normalize.training = inner.training
    loaded.model = wrapped
    return loaded


def check_fits(loaded: LoadedModel, x: torch.Tensor, num_classes: int, data: str) -> None:
    """One forward pass of two test points before anything else runs: a model built for other
    inputs (size, channels) or another number of classes is refused with one line naming the
    shapes, instead of a traceback from deep inside the first attack.

    Args:
        x: test images in [0, 1] (at least one).
        num_classes: the dataset's classes (the logits must be ``(N, num_classes)``).
        data: the dataset's name, for the message.

    Raises:
        ConfigError: the forward pass fails, or returns something else than ``(N, num_classes)``.
    """
    batch = x[:2]
    received = _shape(batch)
    with torch.no_grad(), model_mode(loaded.model, "eval"):
        try:
            logits = loaded.model(batch)
        except (RuntimeError, ValueError) as exc:
            expected = _expected_input(loaded.model, batch)
            raise ConfigError(
                "model",
                loaded.source,
                f"does not take the {data} inputs, of shape {received}{expected}: {_reason(exc)}",
            ) from None
    wanted = (len(batch), num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != wanted:
        got = _shape(logits) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            "model",
            loaded.source,
            f"returns {got} for inputs of shape {received}; expected logits of shape "
            f"{wanted} ({data} has {num_classes} classes)",
        )


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _expected_input(model: nn.Module, batch: torch.Tensor) -> str:
    """What the model's first layer takes, when it says (works on TorchScript too)."""
    for module in model.modules():
        kind = getattr(module, "original_name", type(module).__name__)
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int):
            return f"; its first layer ({kind}) takes {channels} channels, the data has {batch.shape[1]}"
        features = getattr(module, "in_features", None)
        if isinstance(features, int):
            given = math.prod(batch.shape[1:])
            return f"; its first layer ({kind}) takes {features} features, the data has {given} per image"
    return ""


def _reason(exc: Exception) -> str:
    """The line of an error that says what failed (TorchScript puts it last, after its traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.match(r"^[\w.]*(?:Error|Exception): (.*)", line)
        if match:
            return match.group(1)
    return lines[0] if lines else type(exc).__name__
