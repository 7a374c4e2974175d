"""The store's diagnostics table (added in schema 3): rows per measurement and split, keyed by
what they measured, and the in-place upgrade of a version-2 store."""

from __future__ import annotations

import sqlite3

from robustlab.config import RunConfig
from robustlab.store import SCHEMA_VERSION, ResultsStore


def _config() -> dict:
    config = RunConfig().to_dict()
    config["model"]["width"] = 64
    config["method"]["lam"] = 1.0
    return config


def test_the_diagnostics_table_came_with_schema_3() -> None:
    assert SCHEMA_VERSION >= 3


def test_a_diagnostic_is_stored_with_its_summary_and_replaced_when_measured_again(
    tmp_path,
) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    settings = {"norm": "Linf", "data": "digits", "seed": 0}
    first = store.add_diagnostic(
        "r1", "last@3", "margins", "test", {"n": 10, "margin": {"mean": 0.5}}, n=10,
        settings=settings, plot=tmp_path / "margins.png", seconds=0.25,
    )  # fmt: skip
    store.add_diagnostic("r1", "last@3", "margins", "train", {"n": 10}, n=10, settings=settings)
    again = store.add_diagnostic(
        "r1", "last@3", "margins", "test", {"n": 10, "margin": {"mean": 0.75}}, n=10,
        settings=settings,
    )  # fmt: skip
    other_n = store.add_diagnostic("r1", "last@3", "margins", "test", {"n": 5}, n=5)
    rows = store.diagnostics("r1", "margins")
    assert [row["diag_id"] for row in rows] == [first + 1, again, other_n]
    replaced = rows[1]
    assert replaced["summary"] == {"n": 10, "margin": {"mean": 0.75}}
    assert replaced["settings"] == settings and replaced["split"] == "test"
    assert store.diagnostics("r1", "spectra") == []


def test_external_diagnostics_have_no_run_and_spectra_no_split(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.add_diagnostic(None, "model.ts", "spectra", None, {"n_layers": 2})
    (row,) = store.diagnostics()
    assert row["run_id"] is None and row["split"] is None and row["n"] is None
    assert row["summary"] == {"n_layers": 2}


def test_deleting_a_run_deletes_its_diagnostics(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    store.add_diagnostic("r1", "last@3", "spectra", None, {"n_layers": 2})
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM runs WHERE run_id = 'r1'")
    assert store.diagnostics() == []


def test_a_version_2_store_is_upgraded_in_place(tmp_path) -> None:
    store = ResultsStore(tmp_path / "old.db")
    store.upsert_run("r1", tmp_path / "r1", _config())
    # What a store written by schema 2 holds: everything but the diagnostics table.
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TABLE diagnostics")
        db.execute("UPDATE schema_info SET version = 2")
    reopened = ResultsStore(tmp_path / "old.db", create=False)
    assert reopened.run("r1").run_id == "r1"
    reopened.add_diagnostic("r1", "last@3", "spectra", None, {"n_layers": 2})
    assert len(reopened.diagnostics("r1")) == 1
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
