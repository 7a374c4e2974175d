"""λ-tuning accounting (Wu et al. 2021, Table 3): chosen λ, robust accuracy and device-hours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from robustlab.cli.main import main
from robustlab.errors import ConfigError, RunError
from robustlab.store import ResultsStore
from robustlab.store.sqlite import RunRecord
from robustlab.sweep.lam_tuning import RunCost, lam_tuning, read_costs, render_markdown

GRID = [6.0, 9.0, 12.0, 15.0, 18.0, 21.0]


def _record(
    run_id: str,
    width: float,
    lam: float,
    *,
    war: bool = False,
    robust: float = 0.5,
    val: float | None = None,
    hours: float | None = 1.0,
    final_lam: float | None = None,
    seed: int = 0,
    status: str = "finished",
) -> RunRecord:
    """A store record as an ingested run has it (what lam_tuning reads)."""
    config = {
        "device": "cuda",
        "seed": seed,
        "model": {"name": "wrn", "width": width},
        "method": {"name": "trades", "lam": lam, "lam_schedule": "war" if war else "constant"},
    }
    summary: dict[str, Any] = {
        "final": {"epoch": 100, "val_rob_acc": robust if val is None else val},
        "selection": {"last": {"epoch": 100, "robust_accuracy": robust}},
    }
    summary["final"]["lam"] = final_lam if final_lam is not None else lam
    if hours is not None:
        summary["wall_time_s"] = hours * 3600
    return RunRecord(
        run_id, f"/nowhere/{run_id}", "", "", status, "", "cifar10", "wrn", width, 34, "trades",
        lam, "Linf", 8 / 255, seed, 100, config, summary,
    )  # fmt: skip


def _wu_table3_runs() -> list[RunRecord]:
    """Wu et al.'s setting: a 6-λ grid on WRN-34-0.5 (18 GPU hours in total, best λ 6), the
    same grid on widths 1, 5, 10 (12, 20, 32 GPU hours a run; best λ 9, 12, 18 with Table 3's
    PGD accuracies) and one WAR run per width (final λ 9.12, 14.37, 16.43)."""
    best = {0.5: 6.0, 1: 9.0, 5: 12.0, 10: 18.0}
    accuracy = {1: 0.4801, 5: 0.5561, 10: 0.5643}
    fixed = {1: 0.4781, 5: 0.5445, 10: 0.5418}  # λ = 6 used directly (N/A)
    hours = {0.5: 3.0, 1: 12.0, 5: 20.0, 10: 32.0}
    runs = []
    for width in (0.5, 1, 5, 10):
        for lam in GRID:
            robust = 0.40 - 0.001 * abs(lam - best[width])
            if width in accuracy and lam == best[width]:
                robust = accuracy[width]
            elif width in fixed and lam == 6.0:
                robust = fixed[width]
            runs.append(
                _record(f"w{width}-lam{lam:g}", width, lam, robust=robust, hours=hours[width])
            )
    war = {1: (9.12, 0.4806), 5: (14.37, 0.5562), 10: (16.43, 0.5646)}
    for width, (final, robust) in war.items():
        runs.append(
            _record(f"w{width}-war", width, 0.0, war=True, robust=robust, hours=hours[width], final_lam=final)
        )  # fmt: skip
    return runs


def test_wu_table3_lambda_and_gpu_hours() -> None:
    table = lam_tuning(_wu_table3_runs(), calibration_width=0.5)
    assert table.calibration_lam == 6.0
    got = {(r.width, r.strategy): r for r in table.rows}
    # Table 3: (λ, PGD, GPU hours) per width and strategy
    expected = {
        (1, "fixed"): (6.0, 0.4781, 12 + 18),
        (1, "manual"): (9.0, 0.4801, 12 * 6),
        (1, "war"): (9.12, 0.4806, 12 + 18),
        (5, "fixed"): (6.0, 0.5445, 20 + 18),
        (5, "manual"): (12.0, 0.5561, 20 * 6),
        (5, "war"): (14.37, 0.5562, 20 + 18),
        (10, "fixed"): (6.0, 0.5418, 32 + 18),
        (10, "manual"): (18.0, 0.5643, 32 * 6),
        (10, "war"): (16.43, 0.5646, 32 + 18),
    }
    for key, (lam, robust, hours) in expected.items():
        row = got[key]
        assert row.lam == pytest.approx(lam), key
        assert row.metric.mean == pytest.approx(robust), key
        assert row.hours == pytest.approx(hours), key
        assert row.device == "GPU"
    assert got[(10, "war")].calibration_seconds == 18 * 3600
    assert table.speedup(got[(10, "war")]) == pytest.approx(192 / 50)  # "~4 times speedup"
    assert got[(0.5, "manual")].lam == 6.0 and (0.5, "war") not in got
    text = render_markdown(table)
    assert (
        "GPU-hours" in text and "| 10 | war | 16.43 | 56.5 (1) | 50 (incl. 18 calibration)" in text
    )


def test_the_grid_is_chosen_by_the_select_metric_mean_over_seeds() -> None:
    runs = [
        # λ 1: seeds 0.50 and 0.30 (mean 0.40); λ 2: 0.45 and 0.41 (mean 0.43, chosen)
        _record("a0", 4, 1.0, val=0.50, robust=0.2, seed=0),
        _record("a1", 4, 1.0, val=0.30, robust=0.2, seed=1),
        _record("b0", 4, 2.0, val=0.45, robust=0.3, seed=0),
        _record("b1", 4, 2.0, val=0.41, robust=0.5, seed=1),
        _record("c0", 4, 3.0, robust=0.9, status="running"),  # unfinished: ignored
    ]
    (row,) = lam_tuning(runs).rows
    assert row.lam == 2.0 and row.tried == [1.0, 2.0]
    assert row.metric.mean == pytest.approx(0.4) and row.metric.n == 2
    assert row.metric.std == pytest.approx(0.1414, abs=1e-4)
    assert row.hours == pytest.approx(4.0) and row.runs == 4
    by_test = lam_tuning(runs, select="last_robust_accuracy").rows[0]
    assert by_test.lam == 2.0  # 0.4 > 0.2 as well
    assert lam_tuning(runs[:2] + runs[2:3], select="last_robust_accuracy").rows[0].lam == 2.0


def test_war_rows_average_the_final_lambda_over_seeds() -> None:
    runs = [
        _record("w0", 8, 0.0, war=True, final_lam=10.0, seed=0),
        _record("w1", 8, 0.0, war=True, final_lam=12.0, seed=1),
    ]
    (row,) = lam_tuning(runs).rows
    assert row.strategy == "war" and row.lam == pytest.approx(11.0)
    assert row.lam_std == pytest.approx(2**0.5)
    assert row.calibration_seconds == 0 and row.hours == pytest.approx(2.0)


def test_costs_override_and_missing_wall_times() -> None:
    runs = [_record("a", 1, 1.0, hours=None), _record("b", 1, 2.0)]
    (row,) = lam_tuning(runs).rows
    assert row.hours is None and "| - |" in render_markdown(lam_tuning(runs))
    costs = {"a": RunCost(1800.0, "cpu"), "b": RunCost(1800.0, "cpu")}
    (row,) = lam_tuning(runs, costs).rows
    assert row.hours == pytest.approx(1.0) and row.device == "CPU"


def test_errors_name_the_flag() -> None:
    runs = _wu_table3_runs()
    with pytest.raises(ConfigError, match="known: .*val_rob_acc") as info:
        lam_tuning(runs, select="val_acc")
    assert info.value.key == "--select"
    with pytest.raises(RunError, match="calibration-width 2"):
        lam_tuning(runs, calibration_width=2)
    with pytest.raises(RunError, match="no finished runs"):
        lam_tuning([_record("x", 1, 1.0, status="failed")])


def test_three_tiny_real_runs(tmp_path: Path, fast_run, one_thread, capsys) -> None:
    store = tmp_path / "store.db"
    base = [*fast_run, "method.name=trades", "train.epochs=2", "eval.final=true"]
    variants = {
        "lam1": ["method.lam=1"],
        "lam4": ["method.lam=4"],
        "war": ["method.lam_schedule=war", "method.zeta=2"],
    }
    for name, extra in variants.items():
        sets = [a for s in [*base, *extra] for a in ("--set", s)]
        out = ["--out", str(tmp_path / name), "--store", str(store), "--quiet"]
        assert main(["train", *out, *sets]) == 0
    capsys.readouterr()
    assert main(["lam-tuning", "--store", str(store), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {r["strategy"]: r for r in table["rows"]}
    assert set(rows) == {"manual", "war"} and rows["manual"]["tried"] == [1.0, 4.0]
    records = {r.run_id: r for r in ResultsStore(store).runs()}
    infos = {
        p.name: json.loads((p / "run.json").read_text()) for p in tmp_path.iterdir() if p.is_dir()
    }
    val = {name: records[infos[name]["run_id"]].summary["final"]["val_rob_acc"] for name in infos}
    lam = 1.0 if val["lam1"] >= val["lam4"] else 4.0
    assert rows["manual"]["lam"] == lam
    chosen = infos["lam1" if lam == 1.0 else "lam4"]
    assert rows["manual"]["metric"]["mean"] == pytest.approx(
        chosen["selection"]["last"]["robust_accuracy"]
    )
    grid_seconds = infos["lam1"]["wall_time_s"] + infos["lam4"]["wall_time_s"]
    assert rows["manual"]["seconds"] == pytest.approx(grid_seconds)
    assert rows["war"]["seconds"] == pytest.approx(infos["war"]["wall_time_s"])
    assert rows["war"]["lam"] == pytest.approx(
        records[infos["war"]["run_id"]].summary["final"]["lam"]
    )
    assert rows["manual"]["device"] == "CPU"
    assert read_costs(list(records.values()))[infos["war"]["run_id"]].device == "cpu"
    assert main(["lam-tuning", "--store", str(store), "--where", "method.lam_schedule=war"]) == 0
    text = capsys.readouterr().out
    assert "CPU-hours" in text and "| war |" in text and "| manual |" not in text
