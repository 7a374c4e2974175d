"""Where ``robustlab eval`` gets a model: a run directory, a checkpoint, TorchScript, or code.

Each source is one loader in :data:`MODEL_SOURCES`, tried in order; the first whose ``matches``
accepts the reference loads it.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig, build_config
from ..errors import CheckpointError, ConfigError, RunError
from ..models import NormalizedModel
from ..rundir import RunDirectory
from ..training.checkpoint import is_robustlab_checkpoint, load_checkpoint
from ..training.runner import build_model, load_trained_model


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
    """

    model: nn.Module
    source: str
    config: RunConfig | None = None
    run_dir: RunDirectory | None = None
    epoch: int | None = None
    normalizes: bool = False


@dataclass(frozen=True)
class ModelSource:
    name: str
    matches: Callable[[str], bool]
    load: Callable[[str, str, torch.device], LoadedModel]


def _is_run_dir(ref: str) -> bool:
    return Path(ref).is_dir()  # any directory: RunDirectory.open says what a run directory needs


def _load_run(ref: str, checkpoint: str, device: torch.device) -> LoadedModel:
    run = RunDirectory.open(ref)
    model, state = load_trained_model(run, checkpoint, device)
    return LoadedModel(
        model,
        f"{checkpoint}@{state['epoch']}",
        run.read_config(),
        run,
        state["epoch"],
        normalizes=True,
    )


def _load_checkpoint(ref: str, checkpoint: str, device: torch.device) -> LoadedModel:
    state = load_checkpoint(ref, map_location=device)
    if "model_spec" not in state:
        raise CheckpointError(f"checkpoint {ref!r} holds no model (model_spec missing)")
    model = build_model(state["model_spec"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    config = build_config(base=state["config"]) if "config" in state else None
    path = Path(ref).resolve()
    run_dir = (
        RunDirectory(path.parent.parent) if (path.parent.parent / "run.json").is_file() else None
    )
    return LoadedModel(model, str(ref), config, run_dir, state.get("epoch"), normalizes=True)


def _is_torchscript(ref: str) -> bool:
    path = Path(ref)
    return path.is_file() and not is_robustlab_checkpoint(path)


def _load_torchscript(ref: str, checkpoint: str, device: torch.device) -> LoadedModel:
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


def _load_code(ref: str, checkpoint: str, device: torch.device) -> LoadedModel:
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
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            "model",
            ref,
            f"{function_name}() must return a torch.nn.Module, got {type(model).__name__}",
        )
    return LoadedModel(model.to(device), ref)


MODEL_SOURCES = (
    ModelSource("run directory", _is_run_dir, _load_run),
    ModelSource(
        "robustlab checkpoint",
        lambda ref: Path(ref).is_file() and is_robustlab_checkpoint(Path(ref)),
        _load_checkpoint,
    ),
    ModelSource("TorchScript file", _is_torchscript, _load_torchscript),
    ModelSource("module:function", _is_code, _load_code),
)


def load_model(ref: str, checkpoint: str, device: torch.device) -> LoadedModel:
    """Load the model ``ref`` names, trying each source in turn.

    Raises:
        RunError: nothing at ``ref`` is a model (the message lists what is accepted).
    """
    for source in MODEL_SOURCES:
        if source.matches(ref):
            return source.load(ref, checkpoint, device)
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
