"""Sweep specs: one TOML file describing a grid of runs, and its expansion into named runs.

A spec::

    name = "wu-table1"                  # the sweep's name: runs are <name>/<run name>
    base = "cifar10_trades_wrn34.toml"  # a config file (relative to the spec), or a [base] table
    seeds = [0, 1, 2]

    [axes]                              # every combination of these (cartesian product)
    "model.width" = [1, 5, 10]
    "method.lam" = [6, 9, 12]

    [[zip]]                             # keys that vary together (equal lengths)
    "method.name" = ["trades", "pgd_at"]
    "train.lr" = [0.1, 0.05]

    [slurm]                             # passed to the Slurm executor (partition, gpus_per_run, ...)
    partition = "gpu"

``[base]`` holds config keys as ``--set`` takes them, either dotted (``"train.epochs" = 10``) or as
TOML sub-tables (``[base.train]``); so do ``[axes]`` and each ``[[zip]]`` table. A config file
plus changes: ``file = "FILE.toml"`` inside ``[base]`` (TOML cannot hold both ``base = "FILE"``
and a ``[base]`` table). An axis with one value is an override that does not appear in run names.
``name_keys = [...]`` picks the keys that name the runs (default: every key that varies).

Every run of the grid is one config built as defaults <- base file <- ``[base]`` <- the run's
axis values <- its seed, and validated with :func:`robustlab.config.build_config` before
anything runs: a typo in any key stops the sweep with one line naming the run.

Expansion order is deterministic: the axes in the order written, then each ``[[zip]]`` group as
one more axis, then the seeds (fastest-varying last). Run names join one part per varying key
(:data:`NAME_ALIASES`: ``method.name`` shows its value, ``model.width`` as ``w10``, ``method.lam``
as ``lam12``, ``attack.eps`` as ``eps8`` for 8/255, the seed as ``s0``): ``trades-w10-lam12-s0``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..config import RunConfig, build_config, load_toml, merge_tables
from ..errors import ConfigError, did_you_mean
from ..rundir import with_absolute_paths
from .plan import SEED_KEY, PlannedRun

# In [base], the config file the table's keys apply over (not a config key: no clash).
BASE_FILE_KEY = "file"
# The spec's top-level keys.
SPEC_KEYS = ("name", "description", "base", "axes", "zip", "seeds", "name_keys", "slurm")

# How a key shows in a run name: a prefix before its value ("" = the value alone, for keys
# whose values are names). Keys not listed show as their last dotted part plus the value. The
# order here is the order of the parts in a name (then unlisted keys in spec order, seed last).
NAME_ALIASES: dict[str, str] = {
    "tag": "",
    "method.name": "",
    "method.lam_schedule": "",
    "data.name": "",
    "model.name": "",
    "model.depth": "d",
    "model.width": "w",
    "model.options.batchnorm": "bn",
    "method.lam": "lam",
    "method.zeta": "zeta",
    "attack.eps": "eps",
    "eval.eps": "evaleps",
    "attack.eps_schedule": "",
    "train.schedule": "",
    "train.optimizer": "",
    "train.lr": "lr",
    "train.epochs": "ep",
    "data.train_size": "n",
    SEED_KEY: "s",
}
# Budgets are written in 1/255 steps in the literature (8/255 -> eps8).
PIXEL_KEYS = ("attack.eps", "eval.eps", "attack.alpha", "eval.alpha")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec (see the module docstring).

    Attributes:
        name: the sweep's name.
        base_file: the base config file, absolute, or None.
        base: ``[base]`` as dotted key -> value.
        axes: dotted key -> list of values, in the order written.
        zips: each ``[[zip]]`` group as dotted key -> list of values (equal lengths).
        seeds: the seeds; ``None``: the base config's seed only.
        name_keys: the keys whose values name the runs (default: every varying key); the seed
            always ends the name.
        slurm: the ``[slurm]`` table, for the Slurm executor.
        source: the spec file (or ``preset:NAME@SCALE``), for messages and the sweep record.
    """

    name: str
    base_file: Path | None = None
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    zips: list[dict[str, list[Any]]] = field(default_factory=list)
    seeds: list[int] | None = None
    name_keys: list[str] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The spec as recorded in the store's ``sweeps`` table."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "base_file": str(self.base_file) if self.base_file else None,
            "base": self.base,
            "axes": self.axes,
            "zip": self.zips,
            "seeds": self.seeds,
            "name_keys": self.name_keys,
            "slurm": self.slurm,
        }

    @property
    def varying_keys(self) -> list[str]:
        """The config keys that differ between runs, in expansion order (seed last)."""
        keys = [k for k, values in self.axes.items() if len(values) > 1]
        for group in self.zips:
            keys += [k for k, values in group.items() if _distinct(values) > 1]
        if self.seeds is not None and len(self.seeds) > 1:
            keys.append(SEED_KEY)
        return keys

    @property
    def naming_keys(self) -> list[str]:
        """The keys that name the runs (``name_keys``, else every varying key), seed last."""
        keys = self.name_keys if self.name_keys is not None else self.varying_keys
        return [k for k in keys if k != SEED_KEY] + [SEED_KEY]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file (structure only; :func:`expand` validates every run's config).

    Raises:
        ConfigError: a missing file, bad TOML, an unknown top-level key (with a did-you-mean),
            a wrongly shaped table, or ``[[zip]]`` lists of unequal lengths.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            tree = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("spec", str(path), "no such file") from None
    except IsADirectoryError:
        raise ConfigError("spec", str(path), "is a directory; give a sweep spec (.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("spec", str(path), f"not valid TOML ({exc})") from None
    return parse_spec(tree, source=str(path.resolve()), relative_to=path.resolve().parent)


def parse_spec(
    tree: Mapping[str, Any], source: str = "", relative_to: Path | None = None
) -> SweepSpec:
    """A :class:`SweepSpec` from a spec's TOML tree (``relative_to``: where ``base = FILE`` is
    looked up; default the working directory)."""
    for key in tree:
        if key not in SPEC_KEYS:
            guess = did_you_mean(key, SPEC_KEYS)
            hint = f"did you mean {guess!r}?" if guess else f"allowed: {', '.join(SPEC_KEYS)}"
            raise ConfigError(key, _short(tree[key]), f"unknown sweep spec key; {hint}")
    name = tree.get("name")
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise ConfigError(
            "name",
            name,
            "the sweep needs a name of letters, digits, '.', '_' or '-' (it names its directory)",
        )
    base_file, base = None, {}
    raw_base = tree.get("base", {})
    if isinstance(raw_base, Mapping) and BASE_FILE_KEY in raw_base:
        # [base] with `file = "FILE.toml"`: the file, then the table's keys over it
        base = _flatten({k: v for k, v in raw_base.items() if k != BASE_FILE_KEY}, "base")
        raw_base, where = raw_base[BASE_FILE_KEY], f"base.{BASE_FILE_KEY}"
    else:
        where = "base"
    if isinstance(raw_base, str):
        base_file = ((relative_to or Path.cwd()) / raw_base).resolve()
        if not base_file.is_file():
            raise ConfigError(where, raw_base, f"no such config file ({base_file})")
    elif isinstance(raw_base, Mapping):
        base = _flatten(raw_base, "base")
    else:
        raise ConfigError(
            "base", _short(raw_base), "a config file name or a [base] table of config keys"
        )
    axes = {k: _values(f"axes.{k}", v) for k, v in _flatten(tree.get("axes", {}), "axes").items()}
    zips = _zips(tree.get("zip", []))
    seeds = _seeds(tree.get("seeds"))
    _check_disjoint(axes, zips, seeds)
    slurm = tree.get("slurm", {})
    if not isinstance(slurm, Mapping):
        raise ConfigError("slurm", _short(slurm), "a [slurm] table (partition, gpus_per_run, ...)")
    name_keys = tree.get("name_keys")
    if name_keys is not None:
        varied = {*axes, *(k for g in zips for k in g)}
        if not isinstance(name_keys, list) or not all(isinstance(k, str) for k in name_keys):
            raise ConfigError("name_keys", _short(name_keys), "expected a list of config keys")
        for key in name_keys:
            if key not in varied:
                guess = did_you_mean(key, varied)
                hint = f"; did you mean {guess!r}?" if guess else ""
                raise ConfigError("name_keys", key, f"not a key of [axes] or [[zip]]{hint}")
    description = tree.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", _short(description), "expected a string")
    return SweepSpec(
        name=name,
        base_file=base_file,
        base=base,
        axes=axes,
        zips=zips,
        seeds=seeds,
        name_keys=None if name_keys is None else list(name_keys),
        slurm=dict(slurm),
        description=description,
        source=source,
    )


def _flatten(table: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}, "model.width": 2}`` -> ``{"train.epochs": 3, "model.width": 2}``.

    Tables under a dict-valued config key (``model.options``) flatten too, which is what
    ``--set model.options.batchnorm=false`` means as well.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(where, _short(table), "expected a table of config keys")
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, where, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _values(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(where, _short(value), "expected a non-empty list of values")
    return list(value)


def _zips(raw: Any) -> list[dict[str, list[Any]]]:
    if isinstance(raw, Mapping):
        raw = [raw]  # a single [zip] table
    if not isinstance(raw, list):
        raise ConfigError("zip", _short(raw), "expected [[zip]] tables of keys -> lists")
    groups = []
    for i, table in enumerate(raw):
        where = f"zip[{i}]"
        group = {k: _values(f"{where}.{k}", v) for k, v in _flatten(table, where).items()}
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                where,
                lengths,
                "keys that vary together need lists of equal length (one value per run)",
            )
        if group:
            groups.append(group)
    return groups


def _seeds(raw: Any) -> list[int] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
    ):
        raise ConfigError("seeds", _short(raw), "expected a non-empty list of integers")
    if len(set(raw)) != len(raw):
        raise ConfigError("seeds", raw, "a seed is listed twice")
    return list(raw)


def _check_disjoint(
    axes: Mapping[str, list[Any]], zips: Sequence[Mapping[str, list[Any]]], seeds: Any
) -> None:
    seen: dict[str, str] = {}
    for where, keys in [("axes", axes), *((f"zip[{i}]", g) for i, g in enumerate(zips))]:
        for key in keys:
            if key == SEED_KEY and seeds is not None:
                raise ConfigError(f"{where}.{key}", keys[key], "the seeds are set by `seeds`")
            if key in seen:
                raise ConfigError(
                    f"{where}.{key}", keys[key], f"the key is already varied in {seen[key]}"
                )
            seen[key] = where


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


def _distinct(values: Sequence[Any]) -> int:
    return len({repr(v) for v in values})


# ---------------------------------------------------------------------------------------------
# Expansion


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every run's key -> value assignment, in expansion order (seed included when given)."""
    dims: list[list[dict[str, Any]]] = [
        [{key: v} for v in values] for key, values in spec.axes.items()
    ]
    for group in spec.zips:
        length = len(next(iter(group.values())))
        dims.append([{k: vs[i] for k, vs in group.items()} for i in range(length)])
    if spec.seeds is not None:
        dims.append([{SEED_KEY: s} for s in spec.seeds])
    points = []
    for combo in itertools.product(*dims):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def base_tree(spec: SweepSpec) -> dict[str, Any]:
    """Defaults' overrides shared by every run: the base file, then ``[base]``."""
    tree = load_toml(spec.base_file) if spec.base_file is not None else {}
    return merge_tables(tree, _nest(spec.base))


def expand(spec: SweepSpec, out: str | Path) -> list[PlannedRun]:
    """The spec's runs, each with a validated config and its run directory ``out/<sweep>/<run>``.

    Raises:
        ConfigError: the first invalid key or value of any run (naming the run), or two runs
            that would get the same name.
    """
    out_root = Path(out).expanduser().resolve() / spec.name
    shared = base_tree(spec)
    naming = spec.naming_keys
    runs: list[PlannedRun] = []
    by_name: dict[str, dict[str, Any]] = {}
    for point in grid(spec):
        tree = merge_tables(shared, _nest(point))
        try:
            # data.root absolute as a run records it (resolved here, where the sweep starts)
            config = with_absolute_paths(build_config(base=tree))
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(exc.key, exc.value, f"{exc.allowed} (in the run {where})") from None
        values = {key: _typed_value(config, key, point[key]) for key in point}
        values.setdefault(SEED_KEY, config.seed)
        name = run_name(values, naming)
        if name in by_name:
            raise ConfigError(
                "axes",
                name,
                f"two runs get this name ({by_name[name]} and {point}); "
                "give the values distinct names",
            )
        by_name[name] = point
        runs.append(
            PlannedRun(
                sweep=spec.name,
                name=name,
                values=values,
                config=config.to_dict(),
                run_dir=str(out_root / name),
            )
        )
    return runs


def _typed_value(config: RunConfig, key: str, given: Any) -> Any:
    """The value as the config reads it (``"8/255"`` -> 0.0313...), for names and aggregation;
    a dict-valued option (``model.options.batchnorm``) as given."""
    try:
        return config.get(key)
    except AttributeError:
        return given


def run_name(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``trades-w10-lam12-s0``: one part per key of ``keys``, in :data:`NAME_ALIASES` order, then
    the others in the order given, the seed last."""
    order = list(NAME_ALIASES)
    parts = []
    ranked = sorted(
        keys, key=lambda k: (k == SEED_KEY, order.index(k) if k in order else len(order))
    )
    for key in ranked:
        prefix = NAME_ALIASES.get(key, key.rsplit(".", 1)[-1])
        parts.append(prefix + format_name_value(key, values[key]))
    return "-".join(_safe(p) for p in parts)


def format_name_value(key: str, value: Any) -> str:
    """A value as it reads in a run name: ``12.0`` -> ``12``, ``8/255`` -> ``8`` for budgets."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        levels = in_grey_levels(value) if key in PIXEL_KEYS else None
        return f"{levels:g}" if levels is not None else f"{value:g}"
    if isinstance(value, list):
        return "_".join(format_name_value(key, v) for v in value) if value else "none"
    return str(value)


def in_grey_levels(value: float) -> float | None:
    """``value`` in 1/255 steps when it is a multiple of 0.01/255 (8/255 -> 8, 0.5/255 -> 0.5)."""
    levels = value * 255
    rounded = round(levels, 2)
    return rounded if math.isclose(levels, rounded, rel_tol=1e-9, abs_tol=1e-9) else None


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(dotted, value, f"{part!r} is a value, not a table")
            node = child
        node[parts[-1]] = value
    return tree
