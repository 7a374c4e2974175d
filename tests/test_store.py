"""The SQLite results store."""

from __future__ import annotations

import sqlite3

import pytest

from robustlab.config import RunConfig
from robustlab.errors import RunError
from robustlab.store import SCHEMA_VERSION, ResultsStore


def _config(**changes) -> dict:
    config = RunConfig().to_dict()
    config["model"]["width"] = 64
    config["method"]["lam"] = 1.0
    config.update(changes)
    return config


def test_schema_version_and_wal_mode(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ResultsStore(tmp_path / "s.db")  # reopening does not add a second version row
    assert db.execute("SELECT COUNT(*) FROM schema_info").fetchone()[0] == 1
    db.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    with pytest.raises(RunError, match="schema"):
        ResultsStore(tmp_path / "s.db")


def test_missing_store_is_not_created_by_readers(tmp_path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        ResultsStore(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_epochs_are_keyed_by_run_and_epoch(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    store.record_epoch("r1", 1, {"epoch": 1, "test_rob_acc": 0.1})
    store.record_epoch("r1", 2, {"epoch": 2, "test_rob_acc": 0.2})
    store.record_epoch("r1", 2, {"epoch": 2, "test_rob_acc": 0.25})  # a replayed epoch replaces
    assert store.epochs("r1") == [
        {"epoch": 1, "test_rob_acc": 0.1},
        {"epoch": 2, "test_rob_acc": 0.25},
    ]
    store.replace_epochs("r1", [{"epoch": 1, "test_rob_acc": 0.1}])
    assert [m["epoch"] for m in store.epochs("r1")] == [1]
    with pytest.raises(sqlite3.IntegrityError):
        store.record_epoch("unknown-run", 1, {"epoch": 1})  # foreign key: epochs need a run


def test_runs_lookup_by_id_prefix_and_directory(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("20260101-a_1", tmp_path / "a", _config())
    store.upsert_run("20260101-b_1", tmp_path / "b", _config(seed=3))
    assert store.run("20260101-a").run_id == "20260101-a_1"
    assert store.run(str(tmp_path / "b")).seed == 3
    with pytest.raises(RunError, match="ambiguous"):
        store.run("20260101")
    with pytest.raises(RunError, match="no such run"):
        store.run("zzz")
    with pytest.raises(RunError, match="no such run"):
        store.run("20260101-_")  # '_' is literal, not a LIKE wildcard
    store.upsert_run("20260101-a_1", tmp_path / "a", _config(), status="running")
    assert len(store.runs()) == 2
    store.finish_run("20260101-a_1", "finished", {"final": {"test_rob_acc": 0.5}})
    record = store.run("20260101-a_1")
    assert record.status == "finished" and record.summary["final"]["test_rob_acc"] == 0.5
    assert record.width == 64 and record.method == "pgd_at" and record.config["seed"] == 0


def test_evaluations_keep_core_columns_and_details(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    summary = {"natural_accuracy": 0.9, "robust_accuracy": 0.4, "perturbation_stability": 0.45, "n": 100,
               "seconds": 1.5, "per_attack": {"pgd": 0.4}}  # fmt: skip
    eval_id = store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, summary)
    (row,) = store.evaluations("r1")
    assert row["eval_id"] == eval_id and row["robust_accuracy"] == 0.4 and row["n"] == 100
    assert row["details"] == {"per_attack": {"pgd": 0.4}}
    assert store.evaluations("other") == []


# Older schemas (versions 1-4) and their upgrade: tests/test_store_concurrency.py.


def test_the_same_measurement_is_stored_once(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    summary = {"natural_accuracy": 0.9, "robust_accuracy": 0.4, "perturbation_stability": 0.45,
               "n": 100, "seconds": 1.5, "seed": 0, "split": "test",
               "attack_settings": [{"name": "pgd", "steps": 20, "restarts": 1}]}  # fmt: skip
    store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, summary)
    again = store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, {**summary, "seconds": 2.0})
    assert [e["eval_id"] for e in store.evaluations("r1")] == [again]
    # Anything that changes what was measured is a measurement of its own.
    store.add_evaluation("r1", "best@2", "pgd", "Linf", 0.1, summary)
    store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, {**summary, "seed": 1})
    store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.2, summary)
    store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, {**summary, "n": 50})
    steps = [{"name": "pgd", "steps": 50, "restarts": 3}]
    store.add_evaluation("r1", "last@3", "pgd", "Linf", 0.1, {**summary, "attack_settings": steps})
    assert len(store.evaluations("r1")) == 6
