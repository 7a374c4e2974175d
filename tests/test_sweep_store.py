"""Sweeps in the store: schema 4 upgrade, idempotent ingest (the store rebuilt from run
directories), per-cell aggregation and the cell table."""

from __future__ import annotations

import json
import sqlite3
import statistics

import pytest

from robustlab.cli.main import main
from robustlab.errors import ConfigError, RunError
from robustlab.store import SCHEMA_VERSION, ResultsStore
from robustlab.sweep import aggregate
from robustlab.sweep.ingest import find_run_dirs, ingest, ingest_run

V3_RUNS = """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, run_dir TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, status TEXT NOT NULL, tag TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL, model TEXT NOT NULL, width INTEGER, depth INTEGER, method TEXT NOT NULL,
    lam REAL, norm TEXT NOT NULL, eps REAL NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    config TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '{}', pid INTEGER, host TEXT)"""


def test_a_schema_3_store_gets_the_sweep_columns_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        V3_RUNS + ";CREATE TABLE schema_info (version INTEGER NOT NULL);"
        "INSERT INTO schema_info VALUES (3);"
        "INSERT INTO runs VALUES ('r1', '/x', 't', 't', 'finished', '', 'digits', 'mlp', 8, 2, "
        "'pgd_at', NULL, 'Linf', 0.1, 0, 3, '{}', '{}', NULL, NULL);"
    )
    db.commit()
    db.close()
    store = ResultsStore(path)
    assert SCHEMA_VERSION >= 4  # 4: sweeps
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_info").fetchone()[0] == SCHEMA_VERSION
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    assert {"sweep", "sweep_run", "sweep_values"} <= columns
    db.close()
    (record,) = store.runs()
    assert record.run_id == "r1" and record.sweep is None and record.sweep_values is None
    store.upsert_sweep("s", {"name": "s"}, ["a", "b"])
    store.upsert_sweep("s", {"name": "s", "seeds": [0]}, ["a"])  # re-recorded, not duplicated
    assert [(s["name"], s["runs"], s["spec"]["seeds"]) for s in store.sweeps()] == [
        ("s", ["a"], [0])
    ]


@pytest.fixture
def trained_run(tmp_path, fast_run, one_thread, capsys):
    """A finished run trained with `robustlab train` writing its own store."""
    out, store = tmp_path / "run", tmp_path / "trained.db"
    args = ["train", "--out", str(out), "--store", str(store), "--quiet"]
    assert main([*args, *(a for s in fast_run for a in ("--set", s))]) == 0
    capsys.readouterr()
    return out, store


def _rows(path, table, columns):
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(f"SELECT {columns} FROM {table}").fetchall())
    finally:
        db.close()


def test_ingest_is_idempotent_and_rebuilds_the_store(trained_run, tmp_path):
    run_dir, trained_store = trained_run
    before = {t: _rows(trained_store, t, "COUNT(*)") for t in ("runs", "epochs", "evaluations")}
    # Ingesting into the store the run wrote itself adds nothing (same keys).
    store = ResultsStore(trained_store)
    ingest_run(store, run_dir)
    ingest_run(store, run_dir)
    assert {t: _rows(trained_store, t, "COUNT(*)") for t in before} == before
    # A new store built from the run directory holds what the run recorded.
    rebuilt_path = tmp_path / "rebuilt.db"
    (result,) = ingest(ResultsStore(rebuilt_path), [tmp_path])
    assert result.status == "finished" and result.epochs == 3 and result.evaluations == 2
    for table, columns in (
        (
            "runs",
            "run_id, run_dir, status, dataset, model, width, depth, method, eps, seed, epochs",
        ),
        ("epochs", "run_id, epoch, metrics"),
        (
            "evaluations",
            "run_id, source, attack, norm, eps, n, natural_accuracy, robust_accuracy, measure",
        ),
    ):
        assert _rows(rebuilt_path, table, columns) == _rows(trained_store, table, columns), table
    rebuilt = ResultsStore(rebuilt_path).runs()[0]
    original = ResultsStore(trained_store).runs()[0]
    assert rebuilt.summary["selection"] == original.summary["selection"]
    assert rebuilt.summary["final"] == original.summary["final"]
    assert aggregate.final_metrics(rebuilt)["last_robust_accuracy"] == pytest.approx(
        original.summary["selection"]["last"]["robust_accuracy"]
    )


def test_ingest_cli_and_missing_dirs(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    assert list(find_run_dirs([tmp_path])) == [run_dir]
    assert main(["ingest", str(tmp_path), "--store", str(tmp_path / "n.db"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in listed["runs"]] == ["finished"]
    assert main(["ingest", str(tmp_path / "nope"), "--store", str(tmp_path / "m.db")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()  # nothing written for a bad path


def _store_with_cells(tmp_path) -> ResultsStore:
    """A store with the runs of a 2 (lam) x 2 (width) x 3 (seed) sweep, known final metrics."""
    store = ResultsStore(tmp_path / "agg.db")
    config = {
        "data": {"name": "digits"},
        "model": {"name": "mlp", "width": None, "depth": 2},
        "method": {"name": "trades", "lam": None},
        "attack": {"norm": "Linf", "eps": 0.1},
        "train": {"epochs": 1},
        "seed": 0,
    }
    for lam in (1.0, 6.0):
        for width in (8, 16):
            for seed in (0, 1, 2):
                run_id = f"s/w{width}-lam{lam}-s{seed}"
                acc = 0.1 * lam / 6 + 0.01 * width + 0.001 * seed
                store.upsert_run(run_id, f"/r/{run_id}", {**config, "seed": seed})
                values = {"model.width": width, "method.lam": lam, "seed": seed}
                store.set_sweep(run_id, "s", run_id.split("/")[1], values)
                summary = {
                    "final": {"epoch": 1, "test_rob_acc": acc, "train_loss": 1 + acc},
                    "selection": {"last": {"robust_accuracy": acc / 2, "epoch": 1}},
                    "wall_time_s": 10.0 + seed,
                }
                store.finish_run(run_id, "finished", summary)
    store.upsert_run("s/unfinished", "/r/u", config)
    store.set_sweep("s/unfinished", "s", "u", {"model.width": 8, "method.lam": 1.0, "seed": 9})
    return store


def test_cells_hold_mean_std_count_of_every_final_metric(tmp_path):
    store = _store_with_cells(tmp_path)
    cells = aggregate.aggregate(store.sweep_runs("s"))
    assert len(cells) == 4
    cell = next(c for c in cells if c.values == {"model.width": 16, "method.lam": 6.0})
    accs = [0.1 + 0.16 + 0.001 * s for s in (0, 1, 2)]
    stat = cell.metrics["test_rob_acc"]
    assert stat.n == 3 and stat.mean == pytest.approx(statistics.fmean(accs))
    assert stat.std == pytest.approx(statistics.stdev(accs))
    assert cell.metrics["last_robust_accuracy"].mean == pytest.approx(statistics.fmean(accs) / 2)
    assert cell.metrics["wall_time_s"].mean == pytest.approx(11.0)
    assert sorted(cell.seeds) == [0, 1, 2]
    unfinished = next(c for c in cells if c.values == {"model.width": 8, "method.lam": 1.0})
    assert len(unfinished.runs) == 3  # the unfinished run does not count


def test_budget_headers_read_as_budgets_not_as_run_name_parts() -> None:
    grid = aggregate.Grid(
        "test_rob_acc", "method.lam", "attack.eps", [1.0], [8 / 255, 0.2], {}, set(), True
    )
    assert [aggregate.column_label(grid, j) for j in range(2)] == ["8/255", "0.2"]  # not 8, 51
    assert aggregate.row_label(grid, 0) == "1"


def test_grid_marks_the_best_per_column_and_renders(tmp_path):
    records = _store_with_cells(tmp_path).sweep_runs("s")
    grid = aggregate.build_grid(records, "method.lam", "model.width", "test_rob_acc")
    assert grid.rows == [1.0, 6.0] and grid.cols == [8, 16] and grid.percent
    assert grid.best == {(1, 0), (1, 1)}  # lam 6 is better in both columns
    md = aggregate.render_markdown(grid)
    assert "| 6 | **" in md and "± " in md and "(3)" in md
    assert md.splitlines()[0] == "| method.lam \\ model.width | 8 | 16 |"
    csv_text = aggregate.render_csv(grid)
    assert csv_text.splitlines()[2].endswith("(3)*")
    assert "\\textbf{" in aggregate.render_latex(grid)
    # a loss: lower is better (here the loss grows with the accuracy)
    loss = aggregate.build_grid(records, "method.lam", "model.width", "train_loss")
    assert loss.best == {(0, 0), (0, 1)} and not loss.percent
    # --where keeps one row
    one = aggregate.build_grid(
        records, "method.lam", "model.width", "test_rob_acc", aggregate.parse_where(["seed=0"])
    )
    assert {s.n for s in one.stats.values()} == {1} and all(
        s.std is None for s in one.stats.values()
    )


def test_grid_refuses_cells_that_mix_settings_and_unknown_metrics(tmp_path):
    records = _store_with_cells(tmp_path).sweep_runs("s")
    with pytest.raises(RunError, match="also differ in method.lam"):
        aggregate.build_grid(records, "seed", "model.width", "test_rob_acc")
    with pytest.raises(ConfigError, match="known: .*test_rob_acc"):
        aggregate.build_grid(records, "method.lam", "model.width", "test_rob_ac")


def test_where_compares_numbers_as_numbers(tmp_path):
    records = _store_with_cells(tmp_path).sweep_runs("s")
    ((key, value),) = aggregate.parse_where(["attack.eps=0.1"])
    assert key == "attack.eps" and value == 0.1
    assert all(aggregate.matches(r, [("attack.eps", 0.1)]) for r in records)
    assert aggregate.parse_where(["attack.eps=8/255"]) == [("attack.eps", 8 / 255)]
    assert len([r for r in records if aggregate.matches(r, [("model.width", 16.0)])]) == 6
    with pytest.raises(ConfigError):
        aggregate.parse_where(["model.width"])


def test_ingest_ignores_a_torn_last_metrics_line(trained_run, tmp_path):
    run_dir, _ = trained_run
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 4, "train_lo')  # a write cut short
    result = ingest_run(ResultsStore(tmp_path / "t.db"), run_dir)
    assert result.epochs == 3
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('\n{"epoch": 5}\n')  # torn in the middle: not a crash artefact, an error
    with pytest.raises(RunError, match="cannot read the run"):
        ingest_run(ResultsStore(tmp_path / "t.db"), run_dir)
