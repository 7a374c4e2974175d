"""Which runs a report covers: ``robustlab report TARGET... [--where KEY=VALUE ...]``.

A TARGET is read by the first of these that applies (:data:`TARGET_KINDS`, in order):

* ``spec``: a sweep spec file (``.toml``): the runs the store recorded for that sweep;
* ``directory``: a run directory, or a folder holding run directories (a sweep's ``--out``):
  the runs of the store recorded there;
* ``sweep``: the name of a sweep in the store;
* ``run``: a run id, or a unique prefix of one (as ``robustlab show`` takes).

``--where`` then keeps the runs with ``KEY = VALUE`` for every pair (a sweep axis, any config
key, ``tag``); without a TARGET it filters every run of the store. Reading the selection writes
nothing: a run directory the store does not know is refused with the ``robustlab ingest`` hint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..store import ResultsStore
from ..store.sqlite import RunRecord
from ..sweep.aggregate import matches
from ..sweep.plan import SEED_KEY

# Config keys that differ between runs without being a setting of the experiment (where it
# ran, how it was logged or guarded), so runs differing only there are seeds of one setting.
NOT_AXES = frozenset(
    {
        SEED_KEY,
        "device",
        "threads",
        "data.root",
        "data.download",
        "eval.batch_size",
        "train.compile",
        "train.channels_last",
        "train.sync_bn",
        "train.save_epochs",
        "train.loggers",
        "train.init_from",
        "train.max_grad_norm",
        "train.grad_norm_limit",
        "train.on_nan",
    }
)
# The keys a table prefers as its columns and as its rows (Wu et al.'s Table 1: rows λ,
# columns width), and as the name of keys that vary together (eps drags alpha along).
PREFERRED_COLS = ("model.width", "model.depth", "model.name")
PREFERRED_ROWS = ("method.lam", "attack.eps", "method.name", "attack.eps_schedule", "tag")


@dataclass(frozen=True)
class Selection:
    """The runs of a report, in order, and how they were named.

    Attributes:
        records: the selected runs (each once, in the order their target named them).
        title: a few words for the page and the output folder (``sweep digits-width-lambda``).
        sweeps: the sweeps the runs belong to (their names), in order.
    """

    records: list[RunRecord]
    title: str
    sweeps: list[str]

    @property
    def slug(self) -> str:
        """The default output folder's name: the one sweep's, else ``report``."""
        return self.sweeps[0] if len(self.sweeps) == 1 else "report"


def _spec_runs(store: ResultsStore, target: str) -> list[RunRecord] | None:
    path = Path(target)
    if not (path.suffix == ".toml" and path.is_file()):
        return None
    from ..sweep.spec import load_spec

    name = load_spec(path).name
    runs = _in_sweep_order(store, name)
    if not runs:
        raise RunError(
            f"sweep {name!r} ({target}): no runs in {str(store.path)!r} "
            f"(run `robustlab sweep {target}` first)"
        )
    return runs


def _directory_runs(store: ResultsStore, target: str) -> list[RunRecord] | None:
    path = Path(target)
    if not path.is_dir():
        return None
    from ..sweep.ingest import find_run_dirs

    dirs = list(find_run_dirs([path]))
    if not dirs:
        raise RunError(f"{target!r}: no run directories there (a run has run.json)")
    known = {Path(r.run_dir).resolve(): r for r in store.runs()}
    missing = [d for d in dirs if d.resolve() not in known]
    if missing:
        raise RunError(
            f"{str(missing[0])!r}: not in the store {str(store.path)!r} "
            f"(add it with `robustlab ingest {target}`, or pass --store)"
        )
    return [known[d.resolve()] for d in dirs]


def _sweep_runs(store: ResultsStore, target: str) -> list[RunRecord] | None:
    if not any(s["name"] == target for s in store.sweeps()):
        return None
    return _in_sweep_order(store, target)


def _in_sweep_order(store: ResultsStore, sweep: str) -> list[RunRecord]:
    """The sweep's runs in the order its spec expands (width 8 before width 32), not by name."""
    names = next((s["runs"] for s in store.sweeps() if s["name"] == sweep), [])
    rank = {name: i for i, name in enumerate(names)}
    return sorted(store.sweep_runs(sweep), key=lambda r: rank.get(r.sweep_run or "", len(rank)))


def _run(store: ResultsStore, target: str) -> list[RunRecord] | None:
    return [store.run(target)]  # raises "no such run" with the hint


# How a TARGET is read: the first kind whose reader does not answer None wins.
TARGET_KINDS: dict[str, Callable[[ResultsStore, str], list[RunRecord] | None]] = {
    "spec": _spec_runs,
    "directory": _directory_runs,
    "sweep": _sweep_runs,
    "run": _run,
}


def select_runs(
    store: ResultsStore, targets: Sequence[str], where: Sequence[tuple[str, Any]] = ()
) -> Selection:
    """The runs named by ``targets`` (every run of the store when none) that match ``where``.

    Raises:
        RunError: a target names nothing, or no run matches (the message says what was asked).
    """
    chosen: dict[str, RunRecord] = {}
    for target in targets:
        for reader in TARGET_KINDS.values():
            found = reader(store, target)
            if found is not None:
                break
        for record in found or []:
            chosen.setdefault(record.run_id, record)
    pool = list(chosen.values()) if targets else store.runs()
    records = [r for r in pool if matches(r, where)]
    asked = " ".join([*targets, *(f"{k}={v}" for k, v in where)]) or "(all runs)"
    if not records:
        among = f"{len(pool)} runs of {' '.join(targets)}" if targets else "the store's runs"
        raise RunError(f"no runs match {asked} (among {among} in {str(store.path)!r})")
    sweeps = list(dict.fromkeys(r.sweep for r in records if r.sweep))
    if len(sweeps) == 1 and all(r.sweep == sweeps[0] for r in records):
        title = f"sweep {sweeps[0]}"
    else:
        title = f"{len(records)} runs: {asked}"
    if where and len(sweeps) == 1:
        title += " where " + " ".join(f"{k}={v}" for k, v in where)
    return Selection(records, title, sweeps)


# -- what varies ------------------------------------------------------------------------------


def flat_config(record: RunRecord, *, open_options: bool = True) -> dict[str, Any]:
    """The run's config as dotted keys (``model.width``; ``options`` tables opened into their
    keys, or kept whole with ``open_options=False``), the width, depth and λ the run actually
    built where its config left the family's default, and its sweep axes."""
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping) and value and (open_options or key != "options"):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(record.config, "")
    built = {"model.width": record.width, "model.depth": record.depth, "method.lam": record.lam}
    for key, value in built.items():
        if out.get(key) is None and value is not None:
            out[key] = value
    for key, value in (record.sweep_values or {}).items():
        out.setdefault(key, value)
    return out


def common_config(records: Sequence[RunRecord]) -> dict[str, Any]:
    """The dotted config keys every run has with one value, in config order."""
    flats = [flat_config(r) for r in records]
    keys = list(flats[0]) if flats else []
    return {
        k: flats[0][k]
        for k in keys
        if k not in NOT_AXES and all(k in f and _same(f[k], flats[0][k]) for f in flats)
    }


def varying_keys(records: Sequence[RunRecord]) -> dict[str, list[Any]]:
    """The settings that differ between ``records``: key -> its values, sorted.

    Keys whose values split the runs the same way are one setting (a budget axis moves
    ``attack.eps``, ``attack.alpha`` and ``eval.eps`` together): the first of them in
    :data:`PREFERRED_ROWS` / :data:`PREFERRED_COLS`, a sweep axis, or config order names it.
    The seed and keys that are not settings (:data:`NOT_AXES`) never count.
    """
    flats = [flat_config(r) for r in records]
    order = list(dict.fromkeys(k for f in flats for k in f))
    axes = [k for r in records for k in (r.sweep_values or {})]
    preferred = [*PREFERRED_ROWS, *PREFERRED_COLS]
    rank = {k: i for i, k in enumerate(preferred)}
    ordered = sorted(
        order,
        key=lambda k: (
            rank.get(k, len(preferred)),
            0 if k in axes else 1,
            order.index(k),
        ),
    )
    seen_partitions: set[str] = set()
    out: dict[str, list[Any]] = {}
    for key in ordered:
        if key in NOT_AXES:
            continue
        values = [as_key(f.get(key)) for f in flats]
        if len(set(values)) < 2:
            continue
        # Runs grouped by this key's value: two keys with the same groups are one setting.
        first_seen: dict[str, int] = {}
        partition = json.dumps([first_seen.setdefault(v, len(first_seen)) for v in values])
        if partition in seen_partitions:
            continue
        seen_partitions.add(partition)
        out[key] = _sorted_values([f.get(key) for f in flats])
    return {k: out[k] for k in sorted(out, key=order.index)}


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    unique: dict[str, Any] = {}
    for value in values:
        unique.setdefault(as_key(value), value)
    try:
        return sorted(unique.values())
    except TypeError:  # mixed types (None and numbers): first-seen order
        return list(unique.values())


def _same(a: Any, b: Any) -> bool:
    return as_key(a) == as_key(b)


def as_key(value: Any) -> str:
    """``value`` as a comparable, hashable text (lists and tables included)."""
    return json.dumps(value, sort_keys=True, default=str)
