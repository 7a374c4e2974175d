"""Run directories into the results store, idempotently: the store can be rebuilt from them.

A run directory holds everything a run produced: ``run.json`` (status, process, wall time, the
final selection, the sweep it belongs to), ``config.toml`` (the resolved config) and
``metrics.jsonl`` (one line per finished epoch, exactly the epochs its last checkpoint holds).
:func:`ingest_run` writes what they say into the store with the store's keyed writes: the run row
is upserted by ``run_id``, its epochs replaced as a whole, the final evaluations keyed by what
they measured (the same key :func:`robustlab.training.runner.final_selection` uses), so ingesting
a directory twice, or one whose run also wrote the store itself, never adds a second row.

This is how sweep jobs reach the store: a job writes only its run directory (on Slurm, jobs on
other nodes must not write one SQLite file over a network filesystem), and the submitting
``robustlab sweep`` (or ``sweep status``, ``robustlab ingest DIR...``) ingests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import build_config
from ..errors import ConfigError, RunError
from ..rundir import RunDirectory
from ..store import ResultsStore


@dataclass(frozen=True)
class Ingested:
    """What :func:`ingest_run` recorded for one directory."""

    run_id: str
    run_dir: Path
    status: str
    epochs: int
    evaluations: int


def find_run_dirs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """The run directories at or under ``paths`` (a directory holding ``run.json`` and
    ``config.toml``), in sorted order; a run directory's own sub-folders are not searched.

    Raises:
        RunError: a path does not exist.
    """
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise RunError(f"{str(given)!r}: no such directory")
        yield from _walk(root)


def _walk(directory: Path) -> Iterator[Path]:
    if (directory / "run.json").is_file() and (directory / "config.toml").is_file():
        yield directory
        return
    if directory.is_dir():
        for child in sorted(p for p in directory.iterdir() if p.is_dir()):
            yield from _walk(child)


def ingest_run(store: ResultsStore, path: str | Path) -> Ingested:
    """Record the run in directory ``path`` in ``store`` (idempotent; see the module docstring).

    Raises:
        RunError: ``path`` holds no run, or its files cannot be read.
    """
    run = RunDirectory.open(path)
    try:
        info = run.read_info()
        config = build_config(run.config_file)
        history = read_history(run)
        iterations = run.read_iterations()  # train.track_every's records, if any
    except (OSError, ValueError, ConfigError) as exc:
        raise RunError(f"{str(path)!r}: cannot read the run ({exc})") from None
    run_id = str(info["run_id"])
    status = str(info.get("status", "running"))
    config_dict = config.to_dict()
    store.upsert_run(
        run_id,
        run.path.resolve(),
        config_dict,
        status,
        pid=info.get("pid"),
        host=info.get("host"),
    )
    width, depth = _model_shape(config_dict)
    store.set_model_shape(run_id, width, depth)
    store.set_sweep(run_id, info.get("sweep"), info.get("sweep_run"), info.get("values"))
    store.replace_epochs(run_id, history)
    store.replace_iterations(run_id, iterations)
    selection = info.get("selection") or {}
    for which, summary in selection.items():
        _add_selection_evaluation(store, run_id, config, which, summary)
    best = _best(history, info.get("best_epoch"))
    summary: dict[str, Any] = {
        "final": history[-1] if history else {},
        "stopped_early": bool(info.get("stopped_early", False)),
    }
    if status == "finished":
        summary.update(best=best, selection=selection)
    if info.get("wall_time_s") is not None:
        summary["wall_time_s"] = info["wall_time_s"]
    if info.get("error"):
        summary["error"] = info["error"]
    store.finish_run(run_id, status, summary)
    return Ingested(run_id, run.path.resolve(), status, len(history), len(selection))


def read_history(run: RunDirectory) -> list[dict[str, Any]]:
    """``metrics.jsonl``, without a torn last line (a machine that lost power mid-append; the
    run's resume rewrites the file from its checkpoint). A torn line elsewhere is an error."""
    if not run.metrics_file.exists():
        return []
    lines = [line for line in run.metrics_file.read_text().splitlines() if line.strip()]
    history = []
    for i, line in enumerate(lines):
        try:
            history.append(json.loads(line))
        except ValueError:
            if i + 1 < len(lines):
                raise
    return history


def _model_shape(config: dict[str, Any]) -> tuple[Any, Any]:
    """Width and depth as built (the family's defaults when the config leaves them unset)."""
    from ..models import family_spec

    model = config["model"]
    spec = family_spec(model["name"])
    width = spec.default_width if model["width"] is None else model["width"]
    depth = spec.default_depth if model["depth"] is None else model["depth"]
    return width, depth


def _best(history: list[dict[str, Any]], epoch: Any) -> dict[str, Any] | None:
    if epoch is None:
        return None
    return next((m for m in history if m.get("epoch") == epoch), None)


def _add_selection_evaluation(
    store: ResultsStore, run_id: str, config: Any, which: str, summary: dict[str, Any]
) -> None:
    """The final evaluation of the ``which`` model, stored as ``final_selection`` stores it
    (same measure key: the evaluation attack's settings, test split, the run's seed)."""
    from ..report.labels import attack_settings
    from ..training.runner import evaluation_attack

    settings = attack_settings({"pgd": evaluation_attack(config)})
    measured = {
        "attack_settings": settings,
        "split": "test",
        "seed": config.seed,
        "stability_labels": config.eval.stability_labels,
    }
    record = {k: v for k, v in summary.items() if k not in ("epoch", "label")}
    record.setdefault("seconds", 0.0)
    store.add_evaluation(
        run_id,
        f"{which}@{summary['epoch']}",
        "pgd",
        config.eval.norm,
        config.eval.eps,
        {**record, **measured},
    )


def ingest(store: ResultsStore, paths: Iterable[str | Path]) -> list[Ingested]:
    """Ingest every run directory at or under ``paths``."""
    return [ingest_run(store, path) for path in find_run_dirs(paths)]
