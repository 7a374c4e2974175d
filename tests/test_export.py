"""`robustlab export`: per-epoch metrics of many runs as one long table (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.store import ResultsStore

WIDTHS, SEEDS, EPOCHS = (8, 16), (0, 1), 3


def _metrics(width: int, seed: int, epoch: int) -> dict:
    """Distinct numbers per run and epoch, so a row mixed up with another shows."""
    return {
        "epoch": epoch,
        "lr": 0.05 / epoch,
        "test_rob_acc": 0.1 + width / 100 + seed / 1000 + epoch / 10_000,
        "test_nat_acc": 0.5 + width / 100,
        "nat_risk": 1.0 / (epoch + width),
    }


@pytest.fixture
def store(tmp_path):
    """Sweep ``s``: widths 8/16 x seeds 0/1, three epochs each; and a lone run (no sweep)."""
    store = ResultsStore(tmp_path / "r.db")
    for width in WIDTHS:
        for seed in SEEDS:
            run_id = f"s/w{width}-s{seed}"
            config = build_config(
                None, [f"model.width={width}", f"seed={seed}", "tag=grid"]
            ).to_dict()
            store.upsert_run(run_id, tmp_path / run_id, config, status="finished")
            store.set_sweep(run_id, "s", run_id[2:], {"model.width": width, "seed": seed})
            for epoch in range(1, EPOCHS + 1):
                store.record_epoch(run_id, epoch, _metrics(width, seed, epoch))
    store.upsert_sweep("s", {"name": "s"}, [f"w{w}-s{s}" for w in WIDTHS for s in SEEDS])
    lone = build_config(None, ["model.width=32", "tag=lone"]).to_dict()
    store.upsert_run("lone", tmp_path / "lone", lone, status="finished")
    store.record_epoch("lone", 1, {"epoch": 1, "test_rob_acc": 0.9, "lipschitz": 3.0})
    return store


def _export(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_has_one_row_per_run_and_epoch_equal_to_the_store(store, capsys):
    code, out, err = _export(capsys, "s", "--store", str(store.path))
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(WIDTHS) * len(SEEDS) * EPOCHS
    header = next(csv.reader(io.StringIO(out)))
    assert header[:4] == ["run_id", "sweep", "status", "epoch"]
    assert {"model.width", "method.lam", "attack.eps", "seed", "test_rob_acc", "nat_risk"} <= set(
        header
    )
    for row in rows:
        stored = {m["epoch"]: m for m in store.epochs(row["run_id"])}[int(row["epoch"])]
        for metric, value in stored.items():
            assert float(row[metric]) == value, (row["run_id"], metric)
        width, seed = int(row["model.width"]), int(row["seed"])
        assert row["run_id"] == f"s/w{width}-s{seed}" and row["sweep"] == "s"
        assert row["status"] == "finished" and row["tag"] == "grid"
        assert float(row["attack.eps"]) == 0.2
    assert {(r["run_id"], r["epoch"]) for r in rows} == {
        (f"s/w{w}-s{s}", str(e)) for w in WIDTHS for s in SEEDS for e in range(1, EPOCHS + 1)
    }


def test_where_filters_and_json_is_a_list_of_rows(store, tmp_path, capsys):
    out_file = tmp_path / "deep" / "er" / "epochs.json"
    code, out, _ = _export(
        capsys, "--where", "model.width=16", "--store", str(store.path), "--out", str(out_file)
    )
    assert code == 0 and out == ""  # written to --out, nothing on stdout
    rows = json.loads(out_file.read_text())
    assert isinstance(rows, list) and len(rows) == len(SEEDS) * EPOCHS
    assert {r["model.width"] for r in rows} == {16}
    assert (
        rows[0]["test_rob_acc"] == _metrics(16, rows[0]["seed"], rows[0]["epoch"])["test_rob_acc"]
    )
    # Runs without a metric leave it empty (null); run ids and --where tag select too.
    code, out, _ = _export(
        capsys,
        "lone",
        "s/w8-s0",
        "--where",
        "tag=lone",
        "--store",
        str(store.path),
        "--format",
        "json",
    )
    (row,) = json.loads(out)
    assert row["run_id"] == "lone" and row["lipschitz"] == 3.0 and row["sweep"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "no such run"),
        (["s", "--where", "model.width=64"], "no runs match s model.width=64"),
        (["s", "--where", "model.widht=8"], "did you mean 'model.width'"),
        (["s", "--where", "model.width"], "expected KEY=VALUE"),
        (["s", "--out", "{tmp}"], "is a directory"),
        (["s", "--out", "{db}/x.csv"], "is a file, not a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(store, tmp_path, capsys, args, message):
    before = sorted(tmp_path.rglob("*"))
    filled = [a.format(tmp=tmp_path, db=store.path) for a in args]
    code, out, err = _export(capsys, *filled, "--store", str(store.path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("robustlab export: error: ") and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_closed_pipe_is_quiet_from_another_directory(store, tmp_path):
    """`robustlab export ... | head -1` ends quietly (exit 0, no traceback)."""
    # Far more than a pipe's 64 KiB buffer, so that the writer does meet the closed pipe.
    store.replace_epochs("lone", [{"epoch": e, "test_rob_acc": 0.5} for e in range(1, 401)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = (
        f"{sys.executable} -m robustlab export s lone --store {store.path} | head -1; "
        "exit ${PIPESTATUS[0]}"
    )
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run_id,sweep,status,epoch,") and done.stderr == ""
    assert list(elsewhere.iterdir()) == []
