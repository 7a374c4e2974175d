"""``robustlab diagnose MODEL --what NAME[,NAME...] [--split train|test|both] [--eps LIST] [--n N]
[--json] [--out DIR]`` (and the parameter-space measurements' flags: ``--k``, ``--objective``,
``--directions``, ``--points``, ``--a``, ``--with``, ``--order``, ``--save-middle``, ...)

Runs measurements of :mod:`robustlab.diagnostics` (margins, spectra, gaps, ...) on a run, a
checkpoint, a TorchScript file or ``module:function`` (as ``eval`` takes them), records each in
the results store, draws one PNG per measurement in ``--out``, and prints a table per measurement
(or, with ``--json``, one object holding each measurement's summary under its name).

The command is generic over the registry: what data a measurement gets follows its registered
``data`` kind (one split of ``points`` at a time, ``train_test``, or only ``shapes``) and whether
it takes an ``attack``; which command-line settings reach which of its options is a small
:class:`DiagnoseSpec` in :data:`SPECS`. A measurement registered without a spec runs with its
own defaults and a generic table.
"""

from __future__ import annotations

import argparse
import inspect
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._options import accepted_options
from ..attacks import Attack
from ..diagnostics import DIAGNOSTICS, DIRECTIONS, SOLVERS, create_diagnostic, list_diagnostics
from ..diagnostics import plot as plot_diagnostic
from ..diagnostics.connectivity import (
    ORDERS,
    check_batch_norm,
    check_path,
    check_same_architecture,
)
from ..diagnostics.hessian import check_k, parameter_count
from ..errors import ConfigError, RunError, UnknownNameError
from ..evaluation import STABILITY_LABELS
from ..progress import Progress
from ..report import attack_settings, format_eps, format_value, render_table
from ..report.labels import attack_label
from ..store import ResultsStore
from ..store.sqlite import check_store_location
from ..training.checkpoint import save_checkpoint, save_torch_file, seed_everything
from ..training.runner import model_spec_for, resolve_device
from ._common import _clean, add_store_argument, emit_json, info, register_command, store_for
from ._sources import LoadedModel, check_fits
from ._target import (
    add_attack_arguments,
    add_batch_arguments,
    add_model_arguments,
    build_attacks,
    check_budget,
    check_counts,
    data_config,
    eval_batch_size,
    floats,
    load_dataset,
    load_target,
    norm_setting,
    number,
    points,
    set_target_threads,
)

SPLITS = {"train": ("train",), "test": ("test",), "both": ("train", "test")}
# PGD's steps for a model from outside a run (a run's model gets its own eval.steps).
OUTSIDE_RUN_PGD_STEPS = 20
# Options that change how a measurement runs, not what it measures: left out of the store's key.
EXECUTION_OPTIONS = ("batch_size", "eval_batch_size")
# Top-level keys of the --json object besides the measurements' names.
RESERVED_KEYS = ("run_id", "source", "data", "epoch", "seed", "out", "store", "plots", "ids")


# ---------------------------------------------------------------------------------------------
# What the command line feeds each measurement


class Settings:
    """The command line's settings, resolved against the run's evaluation config; the budget
    and the attack only when a measurement asks for them (a model from outside a run needs
    ``--eps`` only then)."""

    def __init__(self, args: argparse.Namespace, loaded: LoadedModel, device: torch.device) -> None:
        self.args, self.loaded, self.device = args, loaded, device
        self.seed = args.seed
        ev = loaded.config.eval if loaded.config is not None else None
        self.norm = norm_setting(args, loaded)
        # Every --eps value (None: a measurement's own default radii, or the run's budget).
        self.eps_values = parse_eps(args.eps)
        for value in self.eps_values or ():
            check_budget(value, self.norm, args.eps)
        self.batch_size = eval_batch_size(loaded, args.batch_size)
        self.stability_labels = args.stability_labels or (
            ev.stability_labels if ev else "predicted"
        )
        # The attack's (PGD's) steps and restarts: the command line's, else the run's eval.*.
        self.steps = args.steps or (ev.steps if ev else OUTSIDE_RUN_PGD_STEPS)
        self.restarts = args.restarts or (ev.restarts if ev else 1)
        self.given_steps = args.steps
        # The parameter-space measurements' settings (None: the measurement's default).
        for flag in MEASUREMENT_FLAGS:
            text = getattr(args, flag.dest)
            setattr(self, flag.dest, None if text is None else flag.parse(flag.flag, text))
        # The dataset, once read (a saved checkpoint records the model built for it).
        self.dataset: Any = None

    @cached_property
    def eps(self) -> float:
        """The one budget: ``--eps``, else the run's ``eval.eps``."""
        if self.eps_values:
            return self.eps_values[0]
        if self.loaded.config is None:
            raise ConfigError(
                "--eps", None, "required for a model from outside a run, e.g. --eps 8/255"
            )
        return float(self.loaded.config.eval.eps)

    @cached_property
    def attacks(self) -> dict[str, Attack]:
        """``--attack`` at :attr:`eps`: the run's evaluation PGD by default, PGD-20 outside a run."""
        return build_attacks(
            self.args,
            self.loaded,
            eps=self.eps,
            outside_run_defaults={"pgd": {"steps": OUTSIDE_RUN_PGD_STEPS}},
        )


@dataclass(frozen=True)
class DiagnoseSpec:
    """How the command line feeds one measurement.

    Attributes:
        options: the measurement's keyword -> the :class:`Settings` attribute that fills it
            (a setting that is ``None`` is left out: the measurement's default applies).
        eps: ``"one"``: it takes one budget (``--eps`` must then be one value); ``"list"``: it
            takes every ``--eps`` value; ``None``: it takes no budget.
        cascade: with an attack, whether it takes several (``--attack a,b``) as a cascade.
        table: renders the summaries as text: ``{split: summary}`` for ``points`` measurements,
            one summary otherwise.
        attack_when: for a measurement registered with an attack, whether these settings want
            it (default: always); the natural loss needs none, so no ``--eps`` either.
        check: checks the options against the model before any data is read (a
            :class:`ConfigError` naming one of the measurement's keywords, which the command
            reports under its flag).
        save: writes what the measurement makes besides its figure, once every measurement
            has run; returns ``{what: path}``, kept in its summary under ``saved``.
        settings: further :class:`Settings` attributes it reads (those of ``save``).
    """

    options: Mapping[str, str] = field(default_factory=dict)
    eps: str | None = None
    cascade: bool = False
    table: Callable[[Any], str] | None = None
    attack_when: Callable[[Settings], bool] | None = None
    check: Callable[[nn.Module, Mapping[str, Any]], None] | None = None
    save: Callable[[Any, Settings], dict[str, str]] | None = None
    settings: tuple[str, ...] = ()

    def reads(self) -> set[str]:
        """The :class:`Settings` attributes that reach the measurement."""
        return set(self.options.values()) | set(self.settings)


def _stability_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [
            split,
            s["n"],
            *(s["fractions"][group] for group in ("robust", "correct_unstable", "stable_wrong")),
            s["fractions"]["neither"],
            s["natural_accuracy"],
            s["robust_accuracy"],
            s["perturbation_stability"],
            s["conditional_robust_accuracy"],
        ]
        for split, s in by_split.items()
    ]
    headers = ["split", "n", "robust", "correct-unstable", "stable-wrong", "neither"]
    headers += ["nat acc", "rob acc", "stability", "rob acc | correct"]
    return render_table(headers, rows, ["auto", "auto", *["pct"] * 8])


def _quantile(stats: Mapping[str, Any], q: str) -> float | None:
    return stats.get("quantiles", {}).get(q)


def _margins_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for split, s in by_split.items():
        m, nm = s["margin"], s["normalized_margin"]
        rows.append(
            [
                split,
                s["n"],
                m["mean"],
                m["std"],
                _quantile(m, "0.5"),
                nm["mean"],
                _quantile(nm, "0.5"),
                s["probability"]["mean"],
                s["loss"]["mean"],
            ]
        )
    headers = ["split", "n", "margin mean", "margin std", "margin median"]
    headers += ["margin/grad mean", "margin/grad median", "p(true) mean", "CE mean"]
    return render_table(headers, rows)


def _lipschitz_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [split, s["n"], s["mean"], s["std"]]
        + [_quantile(s, q) for q in ("0.05", "0.5", "0.95", "1")]
        for split, s in by_split.items()
    ]
    return render_table(["split", "n", "mean", "std", "p5", "median", "p95", "max"], rows)


def _tail(stats: Mapping[str, Any]) -> list[float | None]:
    return [_quantile(stats, "0.5"), _quantile(stats, "1")]


def _loss_variation_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [split, s["n"], format_eps(entry["eps"]), entry["mean"], entry["std"], *_tail(entry)]
        for split, s in by_split.items()
        for entry in s["per_eps"]
    ]
    headers = ["split", "n", "eps", "mean", "std", "median", "max"]
    return render_table(headers, rows)


def _gaps_table(s: Mapping[str, Any]) -> str:
    rows = []
    for key, label, kind in (
        ("nat_loss", "natural loss (CE)", "auto"),
        ("rob_loss", "adversarial loss (CE)", "auto"),
        ("nat_error", "natural error", "pct"),
        ("rob_error", "adversarial error", "pct"),
    ):
        values = (s[f"train_{key}"], s[f"test_{key}"], s[f"{key}_gap"])
        cells = [_cell(v, kind) for v in values]
        rows.append([label, *cells])
    headers = ["", f"train ({s['n_train']})", f"test ({s['n_test']})", "test - train"]
    return render_table(headers, rows)


def _cell(value: float | None, kind: str) -> str:
    return format_value(value, kind)


def _spectra_table(s: Mapping[str, Any]) -> str:
    rows = []
    for layer in s["layers"]:
        operator = "operator_max" in layer
        prefix = "operator" if operator else "matrix"
        size = layer.get("input_size")
        rows.append(
            [
                layer["name"],
                layer["kind"] + ("" if layer.get("exact", True) else " (bound)"),
                "x".join(str(d) for d in layer["weight_shape"]),
                "x".join(str(d) for d in size) if size else "-",
                layer[f"{prefix}_max"],
                layer[f"{prefix}_mean"],
                layer[f"{prefix}_std"],
                layer["matrix_max"],
            ]
        )
    headers = ["layer", "kind", "weight", "input", "sigma max", "sigma mean", "sigma std"]
    headers.append("kernel sigma max")
    table = render_table(headers, rows)
    return (
        f"{table}\nspectral complexity (product of the spectral norms): "
        f"{s['spectral_complexity']:.4g}; with reshaped kernels: "
        f"{s['matrix_spectral_complexity']:.4g}; {s['n_layers']} layers in {s['seconds']:.2f} s"
    )


# ---------------------------------------------------------------------------------------------
# The parameter-space measurements' settings (hessian, landscape, perturbation_similarity,
# connectivity): one flag each, named after the keyword it fills, as --steps fills steps.


def _count(low: int, why: str | None = None) -> Callable[[str, str], int]:
    """A parser of a whole number >= ``low`` (``why`` says what a smaller one would mean)."""

    def parse(flag: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(flag, text, "expected a whole number") from None
        if value < low:
            raise ConfigError(flag, value, why or f"must be >= {low}")
        return value

    return parse


def _choice(names: Callable[[], list[str]] | tuple[Any, ...]) -> Callable[[str, str], Any]:
    """A parser of one of ``names`` (a registry's, read when parsing), as their type."""

    def parse(flag: str, text: str) -> Any:
        valid = list(names() if callable(names) else names)
        for name in valid:
            if str(name) == text:
                return name
        if all(isinstance(name, int) for name in valid):
            raise ConfigError(flag, text, f"one of {', '.join(str(name) for name in valid)}")
        raise UnknownNameError(flag, text, [str(name) for name in valid])

    return parse


def _positive(flag: str, text: str) -> float:
    value = number(flag, text)
    if not 0 < value < float("inf"):
        raise ConfigError(flag, text, "must be a finite number > 0")
    return value


def _radius(flag: str, text: str) -> float:
    value = number(flag, text)
    if not 0 <= value < float("inf"):
        raise ConfigError(flag, text, "must be a finite number >= 0")
    return value


def _grid(flag: str, text: str) -> list[float]:
    """``"0,0.1,1/2"`` -> ``[0.0, 0.1, 0.5]``; an empty list is a grid with no points."""
    values = floats(flag, text)
    if not values:
        raise ConfigError(flag, text, "a grid with no points; give values, e.g. 0,0.1,0.5")
    return values


def _output_file(flag: str, text: str) -> str:
    """An absolute path a file can be written at (checked now; written after the work)."""
    path = Path(text).resolve()
    if path.is_dir():
        raise ConfigError(flag, text, "is a directory; give a file, e.g. middle.pt")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(flag, text, f"cannot create it, {str(parent)!r} is a file")
            break
    return str(path)


@dataclass(frozen=True)
class MeasurementFlag:
    """A command-line option that fills the :class:`Settings` attribute ``dest`` (routed to
    measurements' keywords by their :class:`DiagnoseSpec`); ``parse(flag, text)`` checks it."""

    flag: str
    dest: str
    metavar: str
    help: str
    parse: Callable[[str, str], Any]


OBJECTIVE_CHOICES = ("natural", "adversarial")

MEASUREMENT_FLAGS = (
    MeasurementFlag(
        "--k", "k", "K",
        "hessian: the top K eigenpairs, by magnitude (1 to the number of parameters; "
        "default 20, Liu et al. Fig. 2)",
        _count(1),
    ),
    MeasurementFlag(
        "--solver", "solver", "NAME",
        "hessian: lanczos (default; full reorthogonalization) or power (PyHessian's power "
        "iteration with deflation)",
        _choice(SOLVERS.names),
    ),
    MeasurementFlag(
        "--objective", "objective", "NAME",
        "hessian, landscape, connectivity: the loss, natural or adversarial (default: "
        "adversarial, under --attack; natural needs no attack and no --eps, except connectivity's "
        "robust errors)",
        _choice(OBJECTIVE_CHOICES),
    ),
    MeasurementFlag(
        "--trace-samples", "trace_samples", "N",
        "hessian: Hutchinson samples of the trace (default 0: no trace; PyHessian: up to 100)",
        _count(0),
    ),
    MeasurementFlag(
        "--density-runs", "density_runs", "R",
        "hessian: stochastic Lanczos quadrature runs for the eigenvalue density (default 0: "
        "none; PyHessian: 1)",
        _count(0),
    ),
    MeasurementFlag(
        "--density-steps", "density_steps", "M",
        "hessian: Lanczos steps per density run (default 100)",
        _count(1),
    ),
    MeasurementFlag(
        "--normalize-samples", "normalize_samples", "S",
        "hessian: random parameters θ + a·d whose mean loss the eigenvalues are divided by "
        "(Liu et al. §4.2: 10; default 0: not normalized)",
        _count(0),
    ),
    MeasurementFlag(
        "--normalize-radius", "normalize_radius", "A",
        "hessian: a, the distance of those samples along filter-normalized d (default 1)",
        _radius,
    ),
    MeasurementFlag(
        "--directions", "directions", "NAME",
        "landscape: random (filter-normalized, Li et al.; default) or hessian (the top "
        "eigenvectors, Liu et al. Fig. 12)",
        _choice(DIRECTIONS.names),
    ),
    MeasurementFlag(
        "--dims", "dims", "1|2",
        "landscape: a line (1) or a surface (2, default)",
        _choice((1, 2)),
    ),
    MeasurementFlag(
        "--points", "points", "N",
        "landscape: grid values per axis (default 11; odd puts θ in the middle); "
        "connectivity: values of t (default 61, Garipov et al.)",
        _count(1, "a grid with no points; give at least 1"),
    ),
    MeasurementFlag(
        "--radius", "radius", "R",
        "landscape: the grid spans [-R, R] along each direction (default 1)",
        _radius,
    ),
    MeasurementFlag(
        "--a", "a", "LIST",
        "perturbation_similarity: the steps a along each direction, joined by commas "
        "(default 0,0.05,0.1,0.2,0.5,1)",
        _grid,
    ),
    MeasurementFlag(
        "--random-directions", "random_directions", "N",
        "perturbation_similarity: random unit directions besides the top eigenvector (default 1)",
        _count(0),
    ),
    MeasurementFlag(
        "--repeats", "repeats", "N",
        "perturbation_similarity: attack seeds per step (default 1; Liu et al.: 4)",
        _count(1),
    ),
    MeasurementFlag(
        "--order", "order", "N",
        "connectivity: the Bezier curve's degree, 2 (quadratic, default), 3 or 4",
        _choice(ORDERS),
    ),
    MeasurementFlag(
        "--epochs", "epochs", "N",
        "connectivity: epochs training the curve (default 40)",
        _count(0),
    ),
    MeasurementFlag(
        "--lr", "lr", "LR",
        "connectivity: the curve's SGD learning rate (default 0.03, Garipov et al.'s for ResNets)",
        _positive,
    ),
    MeasurementFlag(
        "--save-middle", "save_middle", "PATH",
        "connectivity: save the curve's point at t = 0.5 there, as a checkpoint (a run's "
        "model: a robustlab checkpoint, for eval, diagnose or train.init_from; else a "
        "state_dict)",
        _output_file,
    ),
)  # fmt: skip

# The command line's name of each Settings attribute, for the errors of measurements' options.
SETTING_FLAGS = {
    "eps": "--eps",
    "eps_values": "--eps",
    "norm": "--norm",
    "steps": "--steps",
    "given_steps": "--steps",
    "restarts": "--restarts",
    "batch_size": "--batch-size",
    "stability_labels": "--stability-labels",
    "seed": "--seed",
    **{flag.dest: flag.flag for flag in MEASUREMENT_FLAGS},
}


def _hessian_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    """The eigenvalues by rank (a column per split, normalized ones beside), then a line per
    split: the loss, the solver's work, and the trace and density when estimated."""
    splits = list(by_split)
    normalized = [s for s in splits if by_split[s].get("normalized_eigenvalues") is not None]
    headers = ["rank", *(f"eigenvalue ({s})" for s in splits)]
    headers += [f"normalized ({s})" for s in normalized]
    k = max(len(by_split[s]["eigenvalues"]) for s in splits)

    def at(values: list[float], i: int) -> float | None:
        return values[i] if i < len(values) else None

    rows = [
        [i + 1]
        + [at(by_split[s]["eigenvalues"], i) for s in splits]
        + [at(by_split[s]["normalized_eigenvalues"], i) for s in normalized]
        for i in range(k)
    ]
    lines = [render_table(headers, rows)]
    for split, s in by_split.items():
        state = "converged" if s["converged"] else f"not converged at tol {s['tol']:g}"
        parts = [
            f"{split}: {s['objective']} loss {s['loss']:.4g} on {s['n']} points, "
            f"{s['parameters']:,} parameters; {s['solver']}, {s['hvps']} Hessian-vector "
            f"products, {state}, {s['seconds']:.2f} s"
        ]
        if s.get("trace") is not None:
            stderr = s.get("trace_stderr")
            spread = f" ± {stderr:.2g}" if stderr is not None else ""
            parts.append(
                f"trace {s['trace']:.4g}{spread} ({s['trace_samples']} Hutchinson samples)"
            )
        if s.get("density"):
            nodes = [v for run in s["density"]["nodes"] for v in run]
            runs, steps = len(s["density"]["nodes"]), len(s["density"]["nodes"][0])
            parts.append(
                f"density: {runs} SLQ run(s) x {steps} steps, eigenvalues in "
                f"[{min(nodes):.4g}, {max(nodes):.4g}]"
            )
        if s.get("random_loss") is not None:
            parts.append(
                f"normalized by the mean loss {s['random_loss']:.4g} at "
                f"{len(s['random_losses'])} random samples (a = {s['normalize_radius']:g})"
            )
        lines.append("\n  ".join(parts))
    return "\n".join(lines)


def _landscape_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per split (θ itself and the extremes); for a line, the loss along it too."""
    rows = [
        [
            split,
            s["n"],
            s["directions"],
            "x".join([str(len(s["coords"]))] * s["dims"]),
            s["origin_loss"],
            s["min_loss"],
            s["max_loss"],
            s["origin_error"],
        ]
        for split, s in by_split.items()
    ]
    headers = ["split", "n", "directions", "grid", "loss at θ", "min loss", "max loss"]
    table = render_table([*headers, "error at θ"], rows, [*["auto"] * 7, "pct"])
    first = next(iter(by_split.values()))
    if first["dims"] != 1:
        return table
    line = [
        [a, *(value for s in by_split.values() for value in (s["loss"][i], s["error"][i]))]
        for i, a in enumerate(first["coords"])
    ]
    columns = ["a", *(f"{kind} ({split})" for split in by_split for kind in ("loss", "error"))]
    kinds = ["auto", *(kind for _ in by_split for kind in ("auto", "pct"))]
    return f"{table}\n\n{render_table(columns, line, kinds)}"


def _perturbation_similarity_table(by_split: Mapping[str, Mapping[str, Any]]) -> str:
    """Per split, direction and step a: the mean cosine similarity and the robust error."""
    rows = [
        [split, direction, a, s["similarity"][d][i], s["robust_error"][d][i]]
        for split, s in by_split.items()
        for d, direction in enumerate(s["directions"])
        for i, a in enumerate(s["a"])
    ]
    headers = ["split", "direction", "a", "cos similarity", "robust error at θ ± a·v"]
    return render_table(headers, rows, ["auto", "auto", "auto", "auto", "pct"])


def _connectivity_table(s: Mapping[str, Any]) -> str:
    """Loss and errors at five values of t along the curve and the line, and the maxima."""
    kind = "rob" if s["objective"] == "adversarial" else "nat"
    metrics = [
        (f"train_{kind}_loss", "train loss", "auto"),
        ("test_nat_error", "test error", "pct"),
    ]
    if "test_rob_error" in s["curve"]:
        metrics.append(("test_rob_error", "test robust error", "pct"))
    t = s["t"]
    shown = sorted(
        {min(range(len(t)), key=lambda i: abs(t[i] - q)) for q in (0, 0.25, 0.5, 0.75, 1)}
    )
    rows = [
        [f"{t[i]:.3g}", *(s[path][m][i] for m, _, _ in metrics for path in ("curve", "line"))]
        for i in shown
    ]
    rows.append(
        ["max", *(s[f"{path}_max"][m] for m, _, _ in metrics for path in ("curve", "line"))]
    )
    headers = ["t", *(f"{label} ({path})" for _, label, _ in metrics for path in ("curve", "line"))]
    kinds = ["auto", *(k for _, _, k in metrics for _ in ("curve", "line"))]
    train = s["train_losses"]
    lines = [
        render_table(headers, rows, kinds),
        f"order-{s['order']} Bezier curve trained {s['epochs']} epochs on the {s['objective']} "
        f"loss (n {s['n_train']} train, {s['n_test']} test)"
        + (f"; training loss {train[0]:.4g} -> {train[-1]:.4g}" if train else ""),
    ]
    for what, path in s.get("saved", {}).items():
        lines.append(f"{what} saved to {path}")
    return "\n".join(lines)


def _adversarial(settings: Settings) -> bool:
    """Whether the loss is the adversarial one (not ``--objective natural``)."""
    return settings.objective != "natural"


def _option_default(name: str, keyword: str) -> Any:
    return inspect.signature(DIAGNOSTICS.get(name)).parameters[keyword].default


def _check_hessian(model: nn.Module, options: Mapping[str, Any]) -> None:
    check_k(options.get("k", _option_default("hessian", "k")), parameter_count(model))


def _check_connectivity(model: nn.Module, options: Mapping[str, Any]) -> None:
    check_same_architecture(model, options["other"])
    check_batch_norm(model)
    check_path(
        options.get("order", _option_default("connectivity", "order")),
        options.get("points", _option_default("connectivity", "points")),
    )


def _save_middle(result: Any, settings: Settings) -> dict[str, str]:
    """``--save-middle PATH``: the curve's point at t = 0.5 (batch-norm statistics re-estimated
    there). A run's model gets a robustlab checkpoint of its architecture (``eval``,
    ``diagnose`` and ``train.init_from`` read it); a model from outside a run, its
    ``state_dict`` (``torch.load`` then ``load_state_dict``)."""
    if settings.save_middle is None or result.middle_state is None:
        return {}
    config = settings.loaded.config
    if config is not None:
        state = {
            "model": result.middle_state,
            "model_spec": model_spec_for(config, settings.dataset),
            "config": config.to_dict(),
        }
        save_checkpoint(settings.save_middle, state)
    else:
        save_torch_file(settings.save_middle, result.middle_state)
    return {"middle checkpoint (t = 0.5)": settings.save_middle}


def _same(*names: str) -> dict[str, str]:
    """Options filled by the :class:`Settings` attribute of the same name."""
    return {name: name for name in names}


# The settings every parameter-space measurement takes: its batch size and its seed (it draws
# start vectors and directions from it, not from the global streams).
PARAMETER_SPACE_OPTIONS = _same("batch_size", "seed")


# One entry per measurement: which settings reach which of its options, and its table.
SPECS: dict[str, DiagnoseSpec] = {
    "stability": DiagnoseSpec(
        {"batch_size": "batch_size", "stability_labels": "stability_labels"},
        eps="one",
        cascade=True,
        table=_stability_table,
    ),
    "gaps": DiagnoseSpec({"batch_size": "batch_size"}, eps="one", table=_gaps_table),
    "margins": DiagnoseSpec({"norm": "norm", "batch_size": "batch_size"}, table=_margins_table),
    "spectra": DiagnoseSpec(table=_spectra_table),
    "loss_variation": DiagnoseSpec(
        {
            "eps": "eps_values",
            "norm": "norm",
            "steps": "steps",
            "restarts": "restarts",
            "batch_size": "batch_size",
        },
        eps="list",
        table=_loss_variation_table,
    ),
    "lipschitz": DiagnoseSpec(
        {"eps": "eps", "norm": "norm", "steps": "given_steps", "batch_size": "batch_size"},
        eps="one",
        table=_lipschitz_table,
    ),
    "hessian": DiagnoseSpec(
        {
            **_same("k", "solver", "objective", "trace_samples", "density_runs"),
            **_same("density_steps", "normalize_samples", "normalize_radius"),
            **PARAMETER_SPACE_OPTIONS,
        },
        eps="one",
        table=_hessian_table,
        attack_when=_adversarial,
        check=_check_hessian,
    ),
    "landscape": DiagnoseSpec(
        {
            **_same("directions", "dims", "points", "radius", "objective"),
            **PARAMETER_SPACE_OPTIONS,
        },
        eps="one",
        table=_landscape_table,
        attack_when=_adversarial,
    ),
    "perturbation_similarity": DiagnoseSpec(
        {**_same("a", "random_directions", "repeats"), **PARAMETER_SPACE_OPTIONS},
        eps="one",
        table=_perturbation_similarity_table,
    ),
    "connectivity": DiagnoseSpec(
        {
            **_same("order", "epochs", "lr", "objective", "points", "seed"),
            # Its own batch_size is the curve's training batch (what it measures: default 128).
            "eval_batch_size": "batch_size",
        },
        eps="one",
        table=_connectivity_table,
        check=_check_connectivity,
        save=_save_middle,
        settings=("save_middle",),
    ),
}


# Settings a measurement without a spec gets when it takes an option of that name: they change
# how it runs or make it repeatable, never what it measures.
GENERIC_OPTIONS = ("batch_size", "seed")


def spec_of(name: str) -> DiagnoseSpec:
    """The measurement's spec; one registered without a spec gets :data:`GENERIC_OPTIONS` and
    otherwise its own defaults."""
    if name in SPECS:
        return SPECS[name]
    accepted = accepted_options(DIAGNOSTICS.get(name))
    return DiagnoseSpec({option: option for option in GENERIC_OPTIONS if option in accepted})


def parse_eps(text: str | None) -> list[float] | None:
    """``"1/255,2/255"`` -> ``[1/255, 2/255]`` (``None`` when ``--eps`` is not given); the
    range is checked once the norm is known (:class:`Settings`)."""
    if text is None:
        return None
    values = []
    for part in (part.strip() for part in text.split(",")):
        try:
            values.append(number("--eps", part))
        except ConfigError:
            raise ConfigError(
                "--eps",
                text,
                f"{part!r} is not a number; give budgets joined by commas, e.g. 1/255,2/255,4/255",
            ) from None
    if not values:
        raise ConfigError("--eps", text, "expected one or more budgets, e.g. 8/255 or 1/255,2/255")
    return values


# ---------------------------------------------------------------------------------------------
# Arguments and checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--what",
        required=True,
        metavar="NAME[,NAME...]",
        help=f"measurements, joined by commas: {', '.join(list_diagnostics())}",
    )
    parser.add_argument(
        "--split",
        choices=tuple(SPLITS),
        default="test",
        help="points measured by margins, stability, loss_variation, lipschitz, hessian, "
        "landscape, perturbation_similarity: test (default), train (the run's training split), "
        "or both (gaps and connectivity always take both)",
    )
    parser.add_argument(
        "--n",
        type=int,
        help="the first N points of each split (default: all); gaps and connectivity take N "
        "of each",
    )
    add_attack_arguments(
        parser,
        eps_help="budget of the attack and of lipschitz (default: the run's eval.eps); for "
        "loss_variation the radii, joined by commas (default 1/255,2/255,4/255)",
        steps_help="attack iterations (PGD default: the run's eval.steps, else 20); also "
        "loss_variation's PGD steps and lipschitz's path length (default 10)",
    )
    parser.add_argument(
        "--stability-labels",
        choices=STABILITY_LABELS,
        default=None,
        help="stability: attack the predicted (default) or the true label",
    )
    add_batch_arguments(parser)
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the figures go (default: RUN/diagnostics/<checkpoint>/ for a run's model, "
        "./diagnostics/<model>/ for one from outside a run)",
    )
    _add_input_arguments(parser)
    group = parser.add_argument_group(
        "parameter space (hessian, landscape, perturbation_similarity, connectivity)"
    )
    for flag in MEASUREMENT_FLAGS:
        group.add_argument(flag.flag, dest=flag.dest, metavar=flag.metavar, help=flag.help)
    add_store_argument(parser, of_run=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the inputs measurements declare (registry metadata ``inputs``), once each."""
    added: set[str] = set()
    for name in list_diagnostics():
        for declared in DIAGNOSTICS.meta(name).get("inputs", {}).values():
            flag = declared["flag"]
            if flag not in added:
                parser.add_argument(
                    flag,
                    dest=_input_dest(flag),
                    metavar=declared["kind"].upper(),
                    help=f"{name}: {declared.get('help', '')}",
                )
                added.add(flag)


def parse_what(text: str) -> list[str]:
    """``"margins, gaps"`` -> ``["margins", "gaps"]`` (order kept, repeats dropped).

    Raises:
        UnknownNameError: a name that is not registered (the message lists the valid ones).
    """
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ConfigError("--what", text, f"one or more of {', '.join(list_diagnostics())}")
    for name in names:
        if name not in DIAGNOSTICS:
            raise UnknownNameError("--what", name, list_diagnostics())
    return names


def _check_flags_used(names: list[str], args: argparse.Namespace) -> None:
    """A measurement flag that none of the measurements asked for reads is a mistake (a
    misremembered --what), said in one line rather than silently ignored."""
    read = set().union(*(spec_of(name).reads() for name in names))
    for flag in MEASUREMENT_FLAGS:
        value = getattr(args, flag.dest)
        if value is not None and flag.dest not in read:
            users = [name for name, spec in SPECS.items() if flag.dest in spec.reads()]
            raise ConfigError(
                flag.flag, value, f"read only by {', '.join(users)}, which --what does not name"
            )


def _check_eps_counts(names: list[str], eps_values: list[float] | None, text: str | None) -> None:
    if eps_values is None or len(eps_values) == 1:
        return
    for name in names:
        if spec_of(name).eps == "one":
            raise ConfigError(
                "--eps",
                text,
                f"{name} takes one budget; give one value, or run loss_variation "
                "(which takes a list) separately",
            )


def _splits_needed(names: list[str], split: str) -> set[str]:
    """The splits of data the measurements read (``shapes`` needs one test image)."""
    needed: set[str] = set()
    for name in names:
        kind = DIAGNOSTICS.meta(name)["data"]
        needed.update(DATA_KINDS[kind].splits(split))
    return needed


def _check_out(path: Path) -> None:
    """Refuse an ``--out`` that cannot be a directory of figures, before any work (writes
    nothing)."""
    if path.exists():
        if not path.is_dir():
            raise RunError(f"--out {str(path)!r} is a file; give a directory")
        return
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"--out {str(path)!r}: cannot create it, {str(parent)!r} is a file")
            return


def default_out(loaded: LoadedModel) -> Path:
    """``RUN/diagnostics/<weights>`` (``last@30``) for a run's model, else
    ``./diagnostics/<model>`` (the file's stem, or ``module.function``), absolute."""
    if loaded.run_dir is not None:
        weights = loaded.source
        if "@" not in weights and loaded.epoch is not None:  # a checkpoint file of the run
            weights = f"{Path(weights).stem}@{loaded.epoch}"
        return (loaded.run_dir.path / "diagnostics" / _slug(weights)).resolve()
    source = loaded.source
    stem = Path(source).stem if Path(source.split("(")[0]).exists() else source.replace(":", ".")
    return (Path("diagnostics") / _slug(stem)).resolve()


def _slug(text: str) -> str:
    return re.sub(r"[^\w.@=+-]+", "_", text).strip("_")[:100] or "model"


# ---------------------------------------------------------------------------------------------
# Running the measurements, by data kind


@dataclass(frozen=True)
class DataKind:
    """How a measurement of one registered ``data`` kind is run.

    Attributes:
        splits: the splits it reads given ``--split``.
        jobs: its units of work: ``(store split label, the splits it reads)``.
    """

    splits: Callable[[str], tuple[str, ...]]
    jobs: Callable[[str], list[tuple[str | None, tuple[str, ...]]]]


DATA_KINDS = {
    # Once per split; the results are kept per split.
    "points": DataKind(
        splits=lambda split: SPLITS[split],
        jobs=lambda split: [(s, (s,)) for s in SPLITS[split]],
    ),
    # Once, on the training and the test points together.
    "train_test": DataKind(
        splits=lambda split: ("train", "test"),
        jobs=lambda split: [("train+test", ("train", "test"))],
    ),
    # Once, on a sample input (its shape sizes the layers).
    "shapes": DataKind(splits=lambda split: ("test",), jobs=lambda split: [(None, ("test",))]),
}


@dataclass
class Job:
    """One unit of work: a measurement on one split (or on what its data kind reads)."""

    name: str
    split: str | None
    reads: tuple[str, ...]
    options: dict[str, Any]
    recorded: dict[str, Any]
    result: Any = None
    seconds: float = 0.0
    n: int | None = None
    plot: str | None = None
    saved: dict[str, str] = field(default_factory=dict)


class _Pulsing(nn.Module):
    """The model, pulsing a progress bar at every forward pass: one measurement of thousands
    of points is one unit of the bar, which should still move every few seconds."""

    def __init__(self, model: nn.Module, bar: Progress) -> None:
        super().__init__()
        self.model, self.bar, self.calls = model, bar, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.bar.pulse(model_calls=self.calls)
        return self.model(x)


def _options_for(name: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The measurement's keyword arguments, and the JSON-ready settings recorded with it."""
    spec, meta = spec_of(name), DIAGNOSTICS.meta(name)
    options = {}
    for keyword, attribute in spec.options.items():
        value = getattr(settings, attribute)
        if value is not None:
            options[keyword] = value
    recorded = {k: v for k, v in options.items() if k not in EXECUTION_OPTIONS}
    if meta.get("attack") and (spec.attack_when is None or spec.attack_when(settings)):
        attacks = settings.attacks
        if not spec.cascade and len(attacks) > 1:
            raise ConfigError(
                "--attack", settings.args.attack, f"{name} takes one attack, not a cascade"
            )
        options["attack"] = attacks if spec.cascade else next(iter(attacks.values()))
        first = next(iter(attacks.values()))
        recorded["attack"] = attack_label(attack_settings(attacks))
        recorded["attack_settings"] = attack_settings(attacks)
        recorded.update(eps=float(first.eps), norm=first.norm)
    for keyword, declared in meta.get("inputs", {}).items():
        reference = getattr(settings.args, _input_dest(declared["flag"]))
        if reference is None:
            raise ConfigError(declared["flag"], None, f"{name} needs {declared['help']}")
        options[keyword] = INPUT_KINDS[declared["kind"]](reference, settings)
        recorded[keyword] = reference
    # Checked now, as attacks' options are: a wrong spec fails before any work.
    create_diagnostic(name, **options)
    _check_required(name, options)
    if spec.check is not None:
        with as_flags(name, recorded):
            spec.check(settings.loaded.model, options)
    return options, recorded


@contextmanager
def as_flags(name: str, recorded: Mapping[str, Any]) -> Iterator[None]:
    """A :class:`ConfigError` of one of the measurement's keywords (``k=0``, ``other=...``)
    re-raised under the flag that set it (``--k=0``, ``--with='runs/b'``), so the one line
    names what the user typed."""
    try:
        yield
    except ConfigError as exc:
        inputs = DIAGNOSTICS.meta(name).get("inputs", {})
        if exc.key in inputs:
            flag, value = inputs[exc.key]["flag"], recorded.get(exc.key, exc.value)
            raise ConfigError(flag, value, f"{exc.value}: {exc.allowed}") from None
        attribute = spec_of(name).options.get(exc.key)
        flag = SETTING_FLAGS.get(attribute) if attribute else None
        if flag is None:
            raise
        raise ConfigError(flag, exc.value, exc.allowed) from None


def _check_required(name: str, options: Mapping[str, Any]) -> None:
    """A measurement's option without a default that nothing on the command line sets is one
    line now, not a TypeError after the data is loaded."""
    data_arguments = {"points": 3, "shapes": 3, "train_test": 5}[DIAGNOSTICS.meta(name)["data"]]
    parameters = list(inspect.signature(DIAGNOSTICS.get(name)).parameters.values())
    for parameter in parameters[data_arguments:]:
        if parameter.default is parameter.empty and parameter.name not in options:
            raise ConfigError(
                "--what", name, f"needs its option {parameter.name!r}, which diagnose does not set"
            )


def _load_input_model(reference: str, settings: Settings) -> nn.Module:
    """A second model (``connectivity --with CHECKPOINT``), loaded as TARGET is, with the same
    checkpoint choice and input normalization, on the same device."""
    args = argparse.Namespace(**{**vars(settings.args), "model": reference, "model_args": []})
    return load_target(args, settings.device).model


# How each kind of declared input (registry metadata ``inputs``) is loaded from its reference.
INPUT_KINDS: dict[str, Callable[[str, Settings], Any]] = {"model": _load_input_model}


def _input_dest(flag: str) -> str:
    return "input_" + flag.lstrip("-").replace("-", "_")


def _run_job(job: Job, model: nn.Module, data: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
    function = create_diagnostic(job.name, **job.options)
    arrays = [tensor for split in job.reads for tensor in data[split]]
    if DIAGNOSTICS.meta(job.name)["data"] == "shapes":
        arrays = [data["test"][0][:1], None]
    job.result = function(model, *arrays)
    job.n = None if job.split is None else sum(len(data[s][1]) for s in job.reads)


# ---------------------------------------------------------------------------------------------
# The command


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet or args.json
    check_counts(args)
    names = parse_what(args.what)
    _check_flags_used(names, args)
    _check_eps_counts(names, parse_eps(args.eps), args.eps)
    device = resolve_device(args.device, "--device")
    loaded = load_target(args, device)
    settings = Settings(args, loaded, device)
    set_target_threads(loaded, args.threads, settings.batch_size, device)
    needed = _splits_needed(names, args.split)
    if "train" in needed and loaded.config is None and args.data is None:
        raise ConfigError(
            "--split" if args.split != "test" else "--what",
            args.split if args.split != "test" else ",".join(names),
            "the training split needs a dataset, and a model from outside a run has none; "
            "pass --data NAME (e.g. --data cifar10)",
        )
    config = data_config(loaded, args.data, args.data_root)
    jobs = []
    for name in names:
        options, recorded = _options_for(name, settings)
        recorded.update(data=config.data.name, seed=args.seed)
        for split, reads in DATA_KINDS[DIAGNOSTICS.meta(name)["data"]].jobs(args.split):
            jobs.append(Job(name, split, reads, options, recorded))
    store_path = store_for(args.store, loaded.run_dir)
    check_store_location(store_path, create=True)
    out = Path(args.out).resolve() if args.out else default_out(loaded)
    _check_out(out)

    dataset = load_dataset(config)
    settings.dataset = dataset
    # A split read only for its shapes (spectra's sample input) needs no more than the fit check.
    measured = _splits_needed(
        [n for n in names if DIAGNOSTICS.meta(n)["data"] != "shapes"], args.split
    )
    data = {
        split: points(dataset, split, args.n if split in measured else 2, device)
        for split in sorted(needed)
    }
    model = loaded.model.to(device)
    sample = next(iter(data.values()))[0][:2]
    check_fits(loaded, sample.float().div(255) if sample.dtype == torch.uint8 else sample,
               dataset.num_classes, config.data.name)  # fmt: skip
    if not args.json:
        info(_header(loaded, config.data.name, names, {s: data[s] for s in measured}))
    with Progress(len(jobs), "diagnose", enabled=not quiet) as bar:
        pulsing = _Pulsing(model, bar) if bar.enabled else model
        for job in jobs:
            bar.stage(job.name + (f" {job.split}" if job.split else ""))
            seed_everything(args.seed)
            kind = DIAGNOSTICS.meta(job.name)["data"]
            start = time.perf_counter()
            # Layer-by-layer measurements read the model's own modules, not the wrapper's.
            with as_flags(job.name, job.recorded):
                _run_job(job, model if kind == "shapes" else pulsing, data)
            job.seconds = time.perf_counter() - start
            bar.update(1)

    payload = _record(jobs, settings, config.data.name, out, store_path)
    if args.json:
        emit_json(payload)
        return 0
    for name in names:
        print(_render(name, payload[name], jobs, loaded))
        print()
    plots = payload["plots"]
    info(
        f"stored in {store_path} (ids {', '.join(str(i) for v in payload['ids'].values() for i in v)}); "
        + (f"figures in {out}" if plots else "no figures")
    )
    return 0


def _header(
    loaded: LoadedModel,
    data: str,
    names: list[str],
    measured: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> str:
    """``run RUN last@3 on synthetic (train 192, test 128 points): margins, gaps``, printed
    before the work starts."""
    model = f"run {loaded.run_dir.run_id} {loaded.source}" if loaded.run_dir else loaded.source
    counts = ", ".join(f"{s} {len(measured[s][1])}" for s in ("train", "test") if s in measured)
    return f"{model} on {data} ({counts + ' points' if counts else 'weights only'}): {', '.join(names)}"


def _record(
    jobs: list[Job],
    settings: Settings,
    data: str,
    out: Path,
    store_path: Path,
) -> dict[str, Any]:
    """Draw the figures, write what measurements save, store the rows, and return the
    ``--json`` object."""
    loaded, seed = settings.loaded, settings.seed
    run_id = loaded.run_dir.run_id if loaded.run_dir is not None else None
    by_name: dict[str, list[Job]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {}
    for name, group in by_name.items():
        for job in _draw(name, group, out):
            plots.setdefault(name, [])
            if job.plot not in plots[name]:
                plots[name].append(job.plot)
    for job in jobs:
        save = spec_of(job.name).save
        if save is not None:
            job.saved = save(job.result, settings)
    store = ResultsStore(store_path)
    if run_id is not None and not store.has_run(run_id):
        status = loaded.run_dir.read_info().get("status", "unknown")
        store.upsert_run(
            run_id, loaded.run_dir.path.resolve(), loaded.config.to_dict(), status=status
        )
    payload: dict[str, Any] = {
        "run_id": run_id,
        "source": loaded.source,
        "epoch": loaded.epoch,
        "data": data,
        "seed": seed,
    }
    ids: dict[str, list[int]] = {}
    for name, group in by_name.items():
        summaries = {}
        for job in group:
            saved = {"saved": job.saved} if job.saved else {}
            summary = _clean({**job.result.summary(), **saved, "settings": job.recorded})
            summaries[job.split] = summary
            ids.setdefault(name, []).append(
                store.add_diagnostic(
                    run_id,
                    loaded.source,
                    name,
                    job.split,
                    summary,
                    n=job.n,
                    settings=job.recorded,
                    plot=job.plot,
                    seconds=job.seconds,
                )
            )
        points_kind = DIAGNOSTICS.meta(name)["data"] == "points"
        payload[name] = summaries if points_kind else next(iter(summaries.values()))
    payload.update(out=str(out), store=str(store_path), plots=plots, ids=ids)
    return payload


def _draw(name: str, group: list[Job], out: Path) -> list[Job]:
    """Draw the measurement's figure(s) in ``out``; returns the jobs drawn, each with its
    figure's path. A ``points`` measurement whose plot overlays splits (``plot_splits``) gets
    one figure of all its splits, ``NAME.png``; otherwise each split its own, ``NAME-SPLIT.png``."""
    meta = DIAGNOSTICS.meta(name)
    if meta["data"] == "points" and meta.get("plot_splits"):
        figures = [(group, {job.split: job.result for job in group}, f"{name}.png")]
    elif len(group) == 1:
        figures = [(group, group[0].result, f"{name}.png")]
    else:
        figures = [([job], job.result, f"{name}-{job.split}.png") for job in group]
    drawn = []
    for jobs, results, filename in figures:
        path = plot_diagnostic(name, results, out / filename)
        for job in jobs if path is not None else ():
            job.plot = str(path)
            drawn.append(job)
    return drawn


def _render(name: str, summary: Any, jobs: list[Job], loaded: LoadedModel) -> str:
    """A title saying what was measured, then the measurement's table."""
    recorded = next(job for job in jobs if job.name == name).recorded
    attacked = "attack" in recorded
    # A declared input is named by its flag: "with runs/b", not "other runs/b".
    inputs = {k: d["flag"].lstrip("-") for k, d in DIAGNOSTICS.meta(name).get("inputs", {}).items()}
    described = []
    for key, value in recorded.items():
        if key in ("attack_settings", "data", "seed") or (attacked and key in ("eps", "norm")):
            continue
        if key in inputs:
            described.append(f"{inputs[key]} {value}")
            continue
        if key == "attack":
            value = f"{value} {recorded['norm']} eps {format_eps(recorded['eps'])}"
        elif key == "eps":
            value = ", ".join(
                format_eps(e) for e in (value if isinstance(value, list) else [value])
            )
        described.append(f"{key} {value}")
    title = "; ".join([f"{name}: {loaded.source}", *described])
    table = spec_of(name).table or _generic_table
    return f"{title}\n{table(summary)}"


def _generic_table(summary: Mapping[str, Any]) -> str:
    """Every scalar of the summary (nested keys joined by dots), one row each; for a summary per
    split, one column per split."""
    per_split = all(isinstance(v, Mapping) for v in summary.values()) and summary
    columns = summary if per_split else {"value": summary}
    flat = {split: dict(_scalars(s)) for split, s in columns.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    rows = [[key, *(flat[s].get(key) for s in flat)] for key in keys]
    return render_table(["", *flat], rows)


def _scalars(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [item for k, v in value.items() for item in _scalars(v, f"{prefix}{k}.")]
    if isinstance(value, bool | int | float | str) or value is None:
        return [(prefix.rstrip("."), value)]
    return []  # lists (histograms, per-layer values) do not fit a row


register_command(
    "diagnose",
    "measure margins, spectra, gaps, stability, loss variation, Lipschitz estimates, Hessian "
    "eigenvalues, loss landscapes, perturbation similarity, mode connectivity of a model",
    add_arguments,
    run,
    description="Run robustlab.diagnostics measurements on a run, checkpoint, TorchScript file "
    "or module:function; store each, draw one PNG per measurement, print a table per measurement.",
)
