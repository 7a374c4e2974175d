"""Issue 14 point 4: concurrent writers lose nothing; older stores are upgraded, newer refused.

The workers are module-level functions, started with multiprocessing's ``spawn`` (a fresh
interpreter each, as separate ``robustlab`` processes are); this module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from robustlab.errors import RunError
from robustlab.store import SCHEMA_VERSION, ResultsStore
from robustlab.store import sqlite as store_module

WORKERS, RUNS, EPOCHS, EVALUATIONS, ITERATIONS = 4, 5, 8, 2, 3


def _config(seed: int) -> dict:
    return {
        "tag": "", "seed": seed, "data": {"name": "digits"},
        "model": {"name": "mlp", "width": 8, "depth": 1}, "method": {"name": "pgd_at", "lam": 1.0},
        "attack": {"norm": "Linf", "eps": 0.1}, "train": {"epochs": EPOCHS},
    }  # fmt: skip


def _write_runs(path: str, worker: int, barrier) -> None:
    """One writer process: its runs, their epochs, iteration records and evaluations."""
    barrier.wait()  # every worker opens the (not yet existing) store at the same moment
    store = ResultsStore(path)
    for r in range(RUNS):
        run_id = f"w{worker}-r{r}"
        store.upsert_run(run_id, f"/runs/{run_id}", _config(r), pid=worker, host="h")
        for epoch in range(1, EPOCHS + 1):
            store.record_epoch(run_id, epoch, {"epoch": epoch, "test_rob_acc": 0.1 * worker})
            its = [{"iteration": epoch * 10 + i, "loss": 1.0} for i in range(ITERATIONS)]
            store.record_iterations(run_id, its)
        for e in range(EVALUATIONS):
            summary = {"natural_accuracy": 0.9, "robust_accuracy": 0.4, "perturbation_stability": 0.5,
                       "n": 100, "seconds": 1.0, "seed": e}  # fmt: skip
            store.add_evaluation(run_id, f"last@{EPOCHS}", "pgd", "Linf", 0.1, summary)
        store.finish_run(run_id, "finished", {"final": {"epoch": EPOCHS}})


def test_four_processes_writing_one_store_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(target=_write_runs, args=(str(path), w, barrier)) for w in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    db = sqlite3.connect(path)
    counts = {
        table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("schema_info", "runs", "epochs", "iterations", "evaluations")
    }
    assert counts == {
        "schema_info": 1,  # the store was created once, not once per process
        "runs": WORKERS * RUNS,
        "epochs": WORKERS * RUNS * EPOCHS,
        "iterations": WORKERS * RUNS * EPOCHS * ITERATIONS,
        "evaluations": WORKERS * RUNS * EVALUATIONS,
    }
    statuses = {row[0] for row in db.execute("SELECT status FROM runs")}
    assert statuses == {"finished"}
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _hold_write_lock(path: Path, seconds: float, started: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    started.set()
    time.sleep(seconds)
    db.execute("COMMIT")
    db.close()


def test_a_locked_store_is_retried_with_backoff_then_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r", "/runs/r", _config(0))
    # A busy handler that gives up at once: "database is locked" reaches the retry loop.
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.01)
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 0.3, started))
    holder.start()
    started.wait()
    store.record_epoch("r", 1, {"epoch": 1})  # waits out the lock through retries
    holder.join()
    assert store.epochs("r") == [{"epoch": 1}]

    monkeypatch.setattr(store_module, "LOCKED_RETRIES", 2)
    started.clear()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 2.0, started))
    holder.start()
    started.wait()
    with pytest.raises(RunError, match=r"stayed locked by other processes .*2 attempts"):
        store.record_epoch("r", 2, {"epoch": 2})
    holder.join()
    assert store.epochs("r") == [{"epoch": 1}]  # the failed transaction left nothing


# ------------------------------------------------------------------------- schema versions

# Version 1, as the first robustlab wrote it.
_SCHEMA_V1 = """
CREATE TABLE schema_info (version INTEGER NOT NULL);
INSERT INTO schema_info VALUES (1);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, run_dir TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, status TEXT NOT NULL, tag TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL,
    model TEXT NOT NULL, width INTEGER, depth INTEGER, method TEXT NOT NULL, lam REAL,
    norm TEXT NOT NULL, eps REAL NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    config TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '{}');
CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE evaluations (eval_id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, created_at TEXT NOT NULL,
    source TEXT NOT NULL, attack TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL, n INTEGER NOT NULL,
    natural_accuracy REAL NOT NULL, robust_accuracy REAL NOT NULL, perturbation_stability REAL NOT NULL,
    seconds REAL NOT NULL, details TEXT NOT NULL DEFAULT '{}');
INSERT INTO runs VALUES ('old', '/runs/old', 't', 't', 'finished', '', 'digits', 'mlp', 256, 1,
    'pgd_at', 1.0, 'Linf', 0.2, 0, 30, '{}', '{"final": {"epoch": 30}}');
INSERT INTO epochs VALUES ('old', 1, '{"epoch": 1}');
"""


def _table_sql(name: str) -> str:
    """The current ``CREATE TABLE`` of ``name`` (tables arrived unchanged in later versions)."""
    match = re.search(rf"CREATE TABLE IF NOT EXISTS {name} \(.*?\n\);", store_module._SCHEMA, re.S)
    assert match is not None
    return match.group(0)


# What each later version added (sqlite.py's schema history).
_CHANGES = {
    2: ["ALTER TABLE runs ADD COLUMN pid INTEGER", "ALTER TABLE runs ADD COLUMN host TEXT",
        "ALTER TABLE evaluations ADD COLUMN measure TEXT"],
    3: [_table_sql("diagnostics")],
    4: [_table_sql("sweeps"), "ALTER TABLE runs ADD COLUMN sweep TEXT",
        "ALTER TABLE runs ADD COLUMN sweep_run TEXT", "ALTER TABLE runs ADD COLUMN sweep_values TEXT"],
}  # fmt: skip


def _old_store(path: Path, version: int) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_V1)
        for v in range(2, version + 1):
            for statement in _CHANGES[v]:
                db.execute(statement)
        db.execute("UPDATE schema_info SET version=?", (version,))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_older_store_is_upgraded_in_place_keeping_its_rows(tmp_path: Path, version: int) -> None:
    assert SCHEMA_VERSION == 5, "add the new version's changes to _CHANGES"
    path = tmp_path / "old.db"
    _old_store(path, version)
    store = ResultsStore(path, create=False)
    assert sqlite3.connect(path).execute("SELECT version FROM schema_info").fetchall() == [(5,)]
    (old,) = store.runs()
    assert old.run_id == "old" and old.summary == {"final": {"epoch": 30}}
    assert store.epochs("old") == [{"epoch": 1}]
    # Everything a current robustlab writes goes in.
    store.upsert_run("new", "/runs/new", _config(1), pid=7, host="h")
    store.record_iterations("new", [{"iteration": 0, "loss": 1.0}])
    store.add_diagnostic("new", "last@1", "margins", "test", {"mean": 0.1})
    store.upsert_sweep("s", {"axes": {}}, ["new"])
    store.set_sweep("new", "s", "a", {"x": 1})
    assert store.run("new").pid == 7 and store.iterations("new") == [{"iteration": 0, "loss": 1.0}]
    assert len(store.diagnostics("new")) == 1 and store.sweep_runs("s")[0].run_id == "new"


def _snapshot(path: Path) -> tuple[str, list]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    rows = [db.execute(f"SELECT * FROM {t}").fetchall() for t in ("schema_info", "runs", "epochs")]
    db.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), rows


def test_a_newer_store_is_refused_in_one_line_and_never_modified(
    tmp_path: Path, fast_run: list[str], capsys
) -> None:
    from robustlab.cli.main import main

    path = tmp_path / "newer.db"
    _old_store(path, 1)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_info SET version=?", (SCHEMA_VERSION + 1,))
        db.execute("CREATE TABLE something_new (x)")  # what a later schema might hold
    before = _snapshot(path)
    with pytest.raises(RunError, match=rf"has schema {SCHEMA_VERSION + 1}; this robustlab reads"):
        ResultsStore(path)
    assert main(["runs", "--store", str(path)]) == 2
    sets = [part for item in fast_run for part in ("--set", item)]
    out = tmp_path / "run"
    assert main(["train", *sets, "--out", str(out), "--store", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("the store was not modified") == 2
    assert "Traceback" not in err
    assert _snapshot(path) == before
    assert not out.exists()  # nothing of the refused run was written
