"""The results store: one SQLite database of runs, per-epoch metrics and evaluations.

WAL mode lets readers (``robustlab runs``, reports) work while a run writes; every write is one
transaction, so a killed process leaves the store as it was before or after a write, never between.
Per-epoch rows are keyed by ``(run_id, epoch)``: a resumed run that replays an epoch replaces the
row instead of adding a second one. Evaluations are keyed by what they measured (``measure``: the
weights, attack settings, threat model, split and seed): measuring the same thing again (a
finished run resumed, ``eval`` run twice) replaces the row, so one measurement is listed once.

Diagnostics (``robustlab diagnose``: margins, spectra, gaps, ...) have their own table, one row per
measurement and split of points, with the measurement's JSON summary; they are keyed by what
they measured in the same way.

Schema history: 1, the first; 2 adds ``runs.pid``/``runs.host`` (which process trains the run,
so a run whose process is gone shows as interrupted) and ``evaluations.measure``; 3 adds the
``diagnostics`` table; 4 adds the ``sweeps`` table and ``runs.sweep`` / ``runs.sweep_run`` /
``runs.sweep_values`` (the sweep a run belongs to, its name there and its axis values); 5 adds
the ``iterations`` table (``train.track_every``'s per-iteration records, keyed by
``(run_id, iteration)`` like epochs). An older store is upgraded in place when opened (new tables are created,
new columns added; nothing is rewritten).
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import _faults
from .._io import disk_full_named
from ..errors import DiskFullError, RunError

SCHEMA_VERSION = 5
# Concurrent writers (a sweep's workers, several `robustlab train`): SQLite's busy handler waits
# up to BUSY_TIMEOUT_S for the write lock; the few "database is locked" errors it does not wait
# out (a lock upgrade in WAL mode, a WAL recovery, a timeout under heavy load) are retried, the
# whole transaction again, up to LOCKED_RETRIES times with jittered exponential backoff.
BUSY_TIMEOUT_S = 15.0
LOCKED_RETRIES = 6
DEFAULT_STORE = Path("runs") / "robustlab.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    run_dir     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    status      TEXT NOT NULL,
    tag         TEXT NOT NULL DEFAULT '',
    dataset     TEXT NOT NULL,
    model       TEXT NOT NULL,
    width       INTEGER,
    depth       INTEGER,
    method      TEXT NOT NULL,
    lam         REAL,
    norm        TEXT NOT NULL,
    eps         REAL NOT NULL,
    seed        INTEGER NOT NULL,
    epochs      INTEGER NOT NULL,
    config      TEXT NOT NULL,
    summary     TEXT NOT NULL DEFAULT '{}',
    pid         INTEGER,
    host        TEXT,
    sweep       TEXT,
    sweep_run   TEXT,
    sweep_values TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id   TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    epoch    INTEGER NOT NULL,
    metrics  TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS iterations (
    run_id     TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    iteration  INTEGER NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (run_id, iteration)
);
CREATE TABLE IF NOT EXISTS evaluations (
    eval_id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id                  TEXT REFERENCES runs(run_id) ON DELETE CASCADE,
    created_at              TEXT NOT NULL,
    source                  TEXT NOT NULL,
    attack                  TEXT NOT NULL,
    norm                    TEXT NOT NULL,
    eps                     REAL NOT NULL,
    n                       INTEGER NOT NULL,
    natural_accuracy        REAL NOT NULL,
    robust_accuracy         REAL NOT NULL,
    perturbation_stability  REAL NOT NULL,
    seconds                 REAL NOT NULL,
    details                 TEXT NOT NULL DEFAULT '{}',
    measure                 TEXT
);
CREATE TABLE IF NOT EXISTS diagnostics (
    diag_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT REFERENCES runs(run_id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    source      TEXT NOT NULL,
    name        TEXT NOT NULL,
    split       TEXT,
    n           INTEGER,
    settings    TEXT NOT NULL DEFAULT '{}',
    summary     TEXT NOT NULL,
    plot        TEXT,
    seconds     REAL NOT NULL,
    measure     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    source      TEXT NOT NULL DEFAULT '',
    spec        TEXT NOT NULL,
    runs        TEXT NOT NULL DEFAULT '[]'
);
"""

# Columns added after schema 1, added to an older store when it is opened.
_ADDED_COLUMNS = {
    "runs": {
        "pid": "INTEGER",
        "host": "TEXT",
        "sweep": "TEXT",
        "sweep_run": "TEXT",
        "sweep_values": "TEXT",
    },
    "evaluations": {"measure": "TEXT"},
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _backoff(attempt: int) -> None:
    """Sleep before retry ``attempt`` (0, 1, ...): 50 ms doubling, jittered, at most ~2 s."""
    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


def _retry_when_locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a store method (one transaction: rolled back whole when it fails) again when SQLite
    reports the database locked, at most :data:`LOCKED_RETRIES` times; then one line."""

    @functools.wraps(method)
    def retrying(self: ResultsStore, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(LOCKED_RETRIES):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc):
                    raise
                if attempt == LOCKED_RETRIES - 1:
                    raise RunError(
                        f"store {str(self.path)!r} stayed locked by other processes ({exc}; "
                        f"{LOCKED_RETRIES} attempts, {BUSY_TIMEOUT_S:g} s each)"
                    ) from None
                _backoff(attempt)
        raise AssertionError("unreachable")

    return retrying


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its JSON columns decoded."""

    run_id: str
    run_dir: str
    created_at: str
    updated_at: str
    status: str
    tag: str
    dataset: str
    model: str
    width: int | None
    depth: int | None
    method: str
    lam: float | None
    norm: str
    eps: float
    seed: int
    epochs: int
    config: dict[str, Any]
    summary: dict[str, Any]
    pid: int | None = None
    host: str | None = None
    sweep: str | None = None
    sweep_run: str | None = None
    sweep_values: dict[str, Any] | None = None


class ResultsStore:
    """Access to one store file; opening creates the file and schema if absent.

    Args:
        path: the SQLite file (default ``runs/robustlab.db``).
        create: create the file if it does not exist (read-only commands pass ``False``).
    """

    def __init__(self, path: str | Path = DEFAULT_STORE, create: bool = True) -> None:
        self.path = Path(path)
        check_store_location(self.path, create)
        if not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # e.g. a read-only file system (root passes the access check)
                raise RunError(
                    f"--store {str(self.path)!r}: cannot create {str(self.path.parent)!r} ({exc.strerror})"
                ) from None
        if not create and not _tables(self.path):
            raise RunError(f"--store {str(self.path)!r} is an empty file, not a results store")
        # A store of a later robustlab is refused before anything (even the journal mode) is
        # written to it: an older program must not "upgrade" a schema it does not know.
        version = _stored_version(self.path)
        if version is not None and version > SCHEMA_VERSION:
            raise RunError(
                f"store {str(self.path)!r} has schema {version}; this robustlab reads <= "
                f"{SCHEMA_VERSION} (upgrade robustlab; the store was not modified)"
            )
        self._create_schema()

    @_retry_when_locked
    def _create_schema(self) -> None:
        """Create the tables, or upgrade an older store in place, in one transaction that holds
        the write lock from its start: processes opening a new store at once create it once."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT version FROM schema_info").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_info (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:  # written in between by a later robustlab
                raise RunError(
                    f"store {str(self.path)!r} has schema {row[0]}; this robustlab reads <= {SCHEMA_VERSION}"
                )
            elif row[0] < SCHEMA_VERSION:
                _upgrade(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose ``with`` block is one transaction (committed, or rolled back).

        Raises:
            DiskFullError: the device is full (the transaction is rolled back whole).
        """
        with _sqlite_full_named(self.path):
            db = _open(self.path)
            try:
                with db:
                    yield db
                    if _faults.ACTIVE and db.in_transaction:  # test-only (robustlab._faults)
                        with disk_full_named(self.path):  # an injected ENOSPC, as SQLite's
                            _faults.trip("store-write", self.path)
            finally:
                db.close()

    # -- runs -------------------------------------------------------------------------------

    @_retry_when_locked
    def upsert_run(
        self,
        run_id: str,
        run_dir: str | Path,
        config: Mapping[str, Any],
        status: str = "running",
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> None:
        """Insert the run, or mark an existing one (a resume) with ``status``.

        ``pid`` and ``host`` name the process that trains it (see :func:`shown_status`); a
        resume records its own.
        """
        now = _now()
        with self._connect() as db:
            db.execute(
                """INSERT INTO runs (run_id, run_dir, created_at, updated_at, status, tag, dataset, model,
                       width, depth, method, lam, norm, eps, seed, epochs, config, pid, host)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status=excluded.status, updated_at=excluded.updated_at,
                       run_dir=excluded.run_dir,
                       pid=COALESCE(excluded.pid, runs.pid), host=COALESCE(excluded.host, runs.host)""",
                (
                    run_id,
                    str(run_dir),
                    now,
                    now,
                    status,
                    config.get("tag", ""),
                    config["data"]["name"],
                    config["model"]["name"],
                    config["model"]["width"],
                    config["model"]["depth"],
                    config["method"]["name"],
                    config["method"]["lam"],
                    config["attack"]["norm"],
                    config["attack"]["eps"],
                    config["seed"],
                    config["train"]["epochs"],
                    json.dumps(config),
                    pid,
                    host,
                ),
            )

    @_retry_when_locked
    def set_sweep(
        self, run_id: str, sweep: str | None, name: str | None, values: Mapping[str, Any] | None
    ) -> None:
        """Record the sweep ``run_id`` belongs to, its name there and its axis values."""
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET sweep=?, sweep_run=?, sweep_values=? WHERE run_id=?",
                (sweep, name, None if values is None else json.dumps(values), run_id),
            )

    def sweep_runs(self, sweep: str) -> list[RunRecord]:
        """The runs recorded as part of ``sweep``, by name."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE sweep=? ORDER BY sweep_run, run_id", (sweep,)
            ).fetchall()
        return [_record(row) for row in rows]

    # -- sweeps -----------------------------------------------------------------------------

    @_retry_when_locked
    def upsert_sweep(
        self, name: str, spec: Mapping[str, Any], runs: list[str], source: str = ""
    ) -> None:
        """Record a sweep: its spec (as run last) and the names of its runs, in order."""
        now = _now()
        with self._connect() as db:
            db.execute(
                """INSERT INTO sweeps (name, created_at, updated_at, source, spec, runs)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET updated_at=excluded.updated_at,
                       source=excluded.source, spec=excluded.spec, runs=excluded.runs""",
                (name, now, now, source, json.dumps(spec), json.dumps(runs)),
            )

    def sweeps(self) -> list[dict[str, Any]]:
        """Every recorded sweep (``spec`` and ``runs`` decoded)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM sweeps ORDER BY created_at, name").fetchall()
        return [
            {**dict(r), "spec": json.loads(r["spec"]), "runs": json.loads(r["runs"])} for r in rows
        ]

    def has_run(self, run_id: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None

    @_retry_when_locked
    def finish_run(self, run_id: str, status: str, summary: Mapping[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status=?, summary=?, updated_at=? WHERE run_id=?",
                (status, json.dumps(summary), _now(), run_id),
            )

    @_retry_when_locked
    def set_model_shape(self, run_id: str, width: int | None, depth: int | None) -> None:
        """Record the width and depth actually built (family defaults resolved)."""
        with self._connect() as db:
            db.execute("UPDATE runs SET width=?, depth=? WHERE run_id=?", (width, depth, run_id))

    def runs(self) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created_at, run_id").fetchall()
        return [_record(row) for row in rows]

    def run(self, ref: str) -> RunRecord:
        """A run by id, unique id prefix, or run directory."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE run_id = ? OR run_dir = ? OR run_dir = ?",
                (ref, ref, str(Path(ref).resolve())),
            ).fetchall()
            if not rows:
                rows = db.execute(
                    "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\'", (_like_prefix(ref),)
                ).fetchall()
        if len(rows) == 1:
            return _record(rows[0])
        if not rows:
            raise RunError(f"run {ref!r}: no such run in {str(self.path)!r} (see `robustlab runs`)")
        raise RunError(
            f"run {ref!r}: ambiguous prefix, matches {', '.join(r['run_id'] for r in rows)}"
        )

    # -- epochs -----------------------------------------------------------------------------

    @_retry_when_locked
    def record_epoch(
        self,
        run_id: str,
        epoch: int,
        metrics: Mapping[str, Any],
        iterations: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """One epoch's row and its per-iteration records (``train.track_every``) in one
        transaction: a store write per epoch, not one per kind of record."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                (run_id, epoch, json.dumps(metrics)),
            )
            _insert_iterations(db, run_id, iterations)
            db.execute("UPDATE runs SET updated_at=? WHERE run_id=?", (_now(), run_id))

    @_retry_when_locked
    def replace_epochs(self, run_id: str, history: list[Mapping[str, Any]]) -> None:
        """Make the run's epochs exactly ``history`` (used on resume, in one transaction)."""
        with self._connect() as db:
            db.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                [(run_id, m["epoch"], json.dumps(m)) for m in history],
            )

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT metrics FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)
            ).fetchall()
        return [json.loads(row["metrics"]) for row in rows]

    # -- iterations (train.track_every) -----------------------------------------------------

    @_retry_when_locked
    def record_iterations(self, run_id: str, records: list[Mapping[str, Any]]) -> None:
        """Add one epoch's per-iteration records (one transaction; a replayed one replaces)."""
        with self._connect() as db:
            _insert_iterations(db, run_id, records)

    @_retry_when_locked
    def replace_iterations(self, run_id: str, records: list[Mapping[str, Any]]) -> None:
        """Make the run's records exactly ``records`` (on resume, from ``iterations.jsonl``)."""
        with self._connect() as db:
            db.execute("DELETE FROM iterations WHERE run_id=?", (run_id,))
            _insert_iterations(db, run_id, records)

    def iterations(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT record FROM iterations WHERE run_id=? ORDER BY iteration", (run_id,)
            ).fetchall()
        return [json.loads(row["record"]) for row in rows]

    # -- evaluations ------------------------------------------------------------------------

    @_retry_when_locked
    def add_evaluation(
        self,
        run_id: str | None,
        source: str,
        attack: str,
        norm: str,
        eps: float,
        summary: Mapping[str, Any],
    ) -> int:
        """Store one evaluation; ``summary`` holds the metrics (extra keys go to ``details``).

        An earlier evaluation of the run that measured the same thing (:func:`measure_key`) is
        replaced: resuming a finished run re-runs its final evaluation, and the store must not
        then list one measurement twice.
        """
        core = ("natural_accuracy", "robust_accuracy", "perturbation_stability", "n", "seconds")
        details = {k: v for k, v in summary.items() if k not in core}
        measure = measure_key(source, attack, norm, eps, summary)
        with self._connect() as db:
            db.execute(
                "DELETE FROM evaluations WHERE run_id IS ? AND measure = ?", (run_id, measure)
            )
            cursor = db.execute(
                """INSERT INTO evaluations (run_id, created_at, source, attack, norm, eps, n, natural_accuracy,
                       robust_accuracy, perturbation_stability, seconds, details, measure)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    run_id,
                    _now(),
                    source,
                    attack,
                    norm,
                    eps,
                    summary["n"],
                    summary["natural_accuracy"],
                    summary["robust_accuracy"],
                    summary["perturbation_stability"],
                    summary["seconds"],
                    json.dumps(details),
                    measure,
                ),
            )
            return int(cursor.lastrowid)

    # -- diagnostics ------------------------------------------------------------------------

    @_retry_when_locked
    def add_diagnostic(
        self,
        run_id: str | None,
        source: str,
        name: str,
        split: str | None,
        summary: Mapping[str, Any],
        *,
        n: int | None = None,
        settings: Mapping[str, Any] | None = None,
        plot: str | Path | None = None,
        seconds: float = 0.0,
    ) -> int:
        """Store one diagnostic measurement (``name`` on ``split``; ``None`` for one that needs
        no points, such as ``spectra``) with its JSON ``summary``; returns its id.

        ``settings`` say how it was measured (the options, the attack's settings, the data, the
        seed): with ``source``, ``name``, ``split`` and ``n`` they key the row, and an earlier row
        of the run with the same key is replaced (measuring the same thing again).
        """
        settings = dict(settings or {})
        measure = json.dumps(
            {"source": source, "name": name, "split": split, "n": n, "settings": settings},
            sort_keys=True,
            default=str,
        )
        with self._connect() as db:
            db.execute(
                "DELETE FROM diagnostics WHERE run_id IS ? AND measure = ?", (run_id, measure)
            )
            cursor = db.execute(
                """INSERT INTO diagnostics (run_id, created_at, source, name, split, n, settings,
                       summary, plot, seconds, measure)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    run_id,
                    _now(),
                    source,
                    name,
                    split,
                    n,
                    json.dumps(settings, default=str),
                    json.dumps(summary),
                    None if plot is None else str(plot),
                    float(seconds),
                    measure,
                ),
            )
            return int(cursor.lastrowid)

    def diagnostics(
        self, run_id: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored diagnostics, oldest first, with ``settings`` and ``summary`` decoded; of one
        run and/or one measurement when given (``run_id=None``: every run's and external ones)."""
        query, params = "SELECT * FROM diagnostics", []
        conditions = []
        if run_id is not None:
            conditions.append("run_id = ?")
            params.append(run_id)
        if name is not None:
            conditions.append("name = ?")
            params.append(name)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY diag_id", params).fetchall()
        out = []
        for row in rows:
            record = dict(row)
            record["settings"] = json.loads(record["settings"])
            record["summary"] = json.loads(record["summary"])
            out.append(record)
        return out

    def evaluations(self, run_id: str | None = None) -> list[dict[str, Any]]:
        with self._connect() as db:
            if run_id is None:
                rows = db.execute("SELECT * FROM evaluations ORDER BY eval_id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM evaluations WHERE run_id=? ORDER BY eval_id", (run_id,)
                ).fetchall()
        out = []
        for row in rows:
            record = dict(row)
            record["details"] = json.loads(record["details"])
            out.append(record)
        return out


def measure_key(source: str, attack: str, norm: str, eps: float, summary: Mapping[str, Any]) -> str:
    """What an evaluation measured, as canonical JSON: the weights (``source``, e.g. ``last@30``),
    the attack and its settings, the threat model, the points (split and ``n``) and the seed.
    Two evaluations with the same key measured the same quantity."""
    return json.dumps(
        {
            "source": source,
            "attack": attack,
            "settings": summary.get("attack_settings"),
            "norm": norm,
            "eps": float(eps),
            "split": summary.get("split", "test"),
            "n": summary["n"],
            "seed": summary.get("seed"),
            "stability_labels": summary.get("stability_labels"),
        },
        sort_keys=True,
    )


def check_store_location(path: Path, create: bool) -> None:
    """Raise :class:`RunError` if ``path`` cannot be (or become) a results store; writes nothing.

    Run before anything of a command is written, so a bad ``--store`` leaves no half-made run.
    """
    if path.is_dir():
        raise RunError(
            f"--store {str(path)!r} is a directory; give a file, e.g. {str(path / 'robustlab.db')!r}"
        )
    if path.exists():
        tables = _tables(path)
        if tables and "schema_info" not in tables:
            raise RunError(
                f"--store {str(path)!r} is a SQLite database of something else "
                f"(tables: {', '.join(sorted(tables))}), not a robustlab results store"
            )
        return
    if not create:
        raise RunError(f"store {str(path)!r} does not exist (train a run first, or pass --store)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(
                    f"--store {str(path)!r}: cannot create its directory, {str(parent)!r} is a file"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunError(f"--store {str(path)!r}: {str(parent)!r} is not writable")
            return


def _tables(path: Path) -> set[str]:
    """The tables of the SQLite file ``path``, read without writing (an empty file has none).

    Raises:
        RunError: the file is not a SQLite database (or cannot be read).
    """
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise RunError(f"--store {str(path)!r} is not a results store (SQLite: {exc})") from None
    return {row[0] for row in rows}


def _open(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with foreign keys on (the journal-mode switch of a new store
    can meet a lock the busy handler does not wait for: retried)."""
    for attempt in range(LOCKED_RETRIES):
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as exc:
            db.close()
            if not _is_locked(exc) or attempt == LOCKED_RETRIES - 1:
                raise
            _backoff(attempt)
            continue
        db.row_factory = sqlite3.Row
        return db
    raise AssertionError("unreachable")


@contextmanager
def _sqlite_full_named(path: Path) -> Iterator[None]:
    """SQLite's "database or disk is full" as :class:`DiskFullError` naming the store."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        raise DiskFullError(f"no space left on the device writing {str(path)!r} ({exc})") from None


def _stored_version(path: Path) -> int | None:
    """The schema version recorded in the store file ``path``, read without writing; None for
    a file without one (new or empty)."""
    if not path.exists() or "schema_info" not in _tables(path):
        return None
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        row = db.execute("SELECT MAX(version) FROM schema_info").fetchone()
    finally:
        db.close()
    return None if row is None or row[0] is None else int(row[0])


def _upgrade(db: sqlite3.Connection) -> None:
    """Add the columns of later schema versions to an older store, then record the version.

    Tables of later versions (``diagnostics``, schema 3) were already created by the schema
    script's ``CREATE TABLE IF NOT EXISTS``."""
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    db.execute("UPDATE schema_info SET version=?", (SCHEMA_VERSION,))


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["config"] = json.loads(data["config"])
    data["summary"] = json.loads(data["summary"])
    if data.get("sweep_values") is not None:
        data["sweep_values"] = json.loads(data["sweep_values"])
    return RunRecord(**data)


def _insert_iterations(
    db: sqlite3.Connection, run_id: str, records: Sequence[Mapping[str, Any]]
) -> None:
    """Per-iteration records into ``iterations`` (a replayed iteration replaces its row)."""
    db.executemany(
        "INSERT OR REPLACE INTO iterations (run_id, iteration, record) VALUES (?, ?, ?)",
        [(run_id, r["iteration"], json.dumps(r)) for r in records],
    )
