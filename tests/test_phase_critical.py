"""``robustlab critical-eps``: ε* from a loss table (exact on synthetic tables), and the study
of ordinary runs behind it (Xing, Song & Cheng 2022, Tables 1, 2 and 4)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from robustlab.cli.main import main
from robustlab.config import RunConfig, all_keys, build_config
from robustlab.phase._runs import clean_config, config_digest, with_budget
from robustlab.phase.critical import InstabilityResult, InstabilityRow
from robustlab.phase.crossing import extrapolate_crossing, interpolate_crossing


def test_interpolation_returns_the_exact_crossing() -> None:
    eps = [0.0, 0.1, 0.2, 0.4]
    losses = [1 + 2 * e for e in eps]  # linear: crosses 1.5 at 0.25
    crossing = interpolate_crossing(eps, losses, 1.5)
    assert crossing.eps == pytest.approx(0.25, abs=1e-15)
    assert crossing.status == "crossed" and crossing.bracket == (0.2, 0.4)
    # piecewise: exact between the two grid points around the crossing
    crossing = interpolate_crossing([0, 1, 2], [0.0, 1.0, 5.0], 3.0)
    assert crossing.eps == pytest.approx(1.5)


def test_interpolation_takes_the_supremum() -> None:
    """A loss that exceeds the threshold, dips back below it and rises again: ε* is the sup of
    the budgets whose loss is at most the threshold, so the last crossing."""
    crossing = interpolate_crossing([0.0, 0.1, 0.2, 0.3], [0.9, 1.2, 0.95, 1.3], 1.0)
    assert crossing.eps == pytest.approx(0.2 + 0.05 * 0.1 / 0.35)
    assert crossing.bracket == (0.2, 0.3)


def test_interpolation_says_when_the_curves_never_cross() -> None:
    below = interpolate_crossing([0.0, 1.0, 2.0], [0.1, 0.2, 0.3], 1.0)
    assert below.eps is None and below.status == "below"
    assert "ε* > 2" in below.message and "larger budgets" in below.message
    above = interpolate_crossing([0.5, 1.0], [2.0, 3.0], 1.0)
    assert above.eps is None and above.status == "above"
    assert "ε* < 0.5" in above.message and "smaller budgets" in above.message


def test_extrapolation_extends_the_fitted_line() -> None:
    crossing = extrapolate_crossing([0.0, 0.01, 0.02], [0.5, 0.6, 0.7], 1.0)
    assert crossing.eps == pytest.approx(0.05)
    assert crossing.slope == pytest.approx(10.0) and "beyond" in crossing.message
    flat = extrapolate_crossing([0.0, 0.01], [0.5, 0.4], 1.0)
    assert flat.eps is None and flat.status == "no_slope"


def test_budget_configs_scale_step_sizes_and_evaluate_at_the_training_budget() -> None:
    base = build_config(None, ["attack.eps=8/255", "attack.alpha=2/255", "eval.eps=16/255"])
    half = with_budget(base, 4 / 255)
    assert half.attack.eps == pytest.approx(4 / 255)
    assert half.attack.alpha == pytest.approx(1 / 255)  # the alpha/eps ratio kept
    assert half.eval.eps == pytest.approx(4 / 255)  # R̂(θ̂(ε), ε): measured at ε
    assert half.eval.alpha == pytest.approx(2.5 * (4 / 255) / half.eval.steps)
    clean = clean_config(base)
    assert clean.method.name == "clean" and clean.attack.eps == 0 and clean.eval.eps == 0
    # a clean run's saved config reads back (its step sizes resolve to 0)
    assert build_config(base=clean.to_dict()).attack.alpha == 0


def test_run_identity_hashes_what_the_config_sets(monkeypatch) -> None:
    """Two builds of one config share a digest; any set key changes it; keys left at their
    defaults do not enter it, so a key added to robustlab later keeps a study's runs."""
    import robustlab.phase._runs as runs

    a, b = build_config(None, ["attack.eps=0.1"]), build_config(None, ["attack.eps=0.1"])
    assert config_digest(a) == config_digest(b)
    assert config_digest(a) != config_digest(build_config(None, ["attack.eps=0.1", "seed=1"]))
    at_default = [k for k in all_keys() if a.get(k) == RunConfig().get(k)]
    assert "train.init_from" in at_default
    before = config_digest(a)
    # robustlab before train.init_from existed
    monkeypatch.setattr(runs, "all_keys", lambda: [k for k in all_keys() if k != "train.init_from"])
    assert config_digest(a) == before


def test_instability_threshold_is_the_first_collapsed_budget() -> None:
    rows = [
        InstabilityRow(1 / 255, False, None, 0.5, 0.4),
        InstabilityRow(4 / 255, True, 7, 0.0, 0.0),
        InstabilityRow(8 / 255, True, 3, 0.0, 0.0),
    ]
    assert InstabilityResult(rows).unstable_eps == pytest.approx(4 / 255)
    none = InstabilityResult(rows[:1])
    assert none.unstable_eps is None and "beyond the grid" in none.message


def _critical(tmp_path, capsys, fast_run, *extra: str) -> tuple[int, str, str]:
    argv = ["critical-eps", "--out", str(tmp_path / "study"), "--store", str(tmp_path / "db")]
    for item in fast_run:
        argv += ["--set", item]
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_critical_eps_end_to_end_and_rerun_skips(tmp_path, capsys, fast_run, one_thread) -> None:
    code, out, err = _critical(tmp_path, capsys, fast_run, "--eps", "0.02,0.05,0.1", "--json")
    assert code == 0, err
    payload = json.loads(out)
    table = payload["table"]
    assert [row["eps"] for row in table] == [0.0, 0.02, 0.05, 0.1]
    expected = interpolate_crossing(
        [row["eps"] for row in table], [row["train_loss"] for row in table], table[0]["test_loss"]
    )
    assert payload["critical_eps"] == expected.eps
    assert payload["clean_test_loss"] == table[0]["test_loss"]
    assert (tmp_path / "study" / "critical_eps.png").stat().st_size > 0
    assert len(list((tmp_path / "study").glob("*/run.json"))) == 4
    with sqlite3.connect(tmp_path / "db") as db:
        rows = db.execute("SELECT run_id, status, tag FROM runs").fetchall()
    assert len(rows) == 4 and all(status == "finished" for _, status, _ in rows)
    assert len({tag for _, _, tag in rows}) == 1 and rows[0][2].startswith("critical-eps:")
    # the same command again: every run found by its config's hash and skipped
    code, out2, err2 = _critical(tmp_path, capsys, fast_run, "--eps", "0.02,0.05,0.1")
    assert code == 0 and err2.count("skipped") == 4 and ": training " not in err2
    assert f"ε* = {payload['critical_eps']:.4g}" in out2
    # a grid sharing budgets trains only the new one
    code, _, err3 = _critical(tmp_path, capsys, fast_run, "--eps", "0.05,0.2", "--quiet")
    assert code == 0 and err3 == ""
    assert len(list((tmp_path / "study").glob("eps-*"))) == 4


def test_fast_critical_eps_and_fgsm_instability(tmp_path, capsys, fast_run, one_thread):
    code, out, err = _critical(
        tmp_path, capsys, fast_run, "--fast", "--fast-eps", "0.02", "--repeats", "2",
        "--fast-attack", "fgm", "--fgsm", "0.05,0.1", "--json",
    )  # fmt: skip
    assert code == 0, err
    fast = json.loads(out)["fast"]
    assert [row["eps"] for row in fast["table"]] == [0.01, 0.02]
    expected = extrapolate_crossing(
        [0.0, 0.01, 0.02],
        [fast["clean_train_loss"], *(row["train_loss"] for row in fast["table"])],
        fast["clean_test_loss"],
    )
    assert fast["critical_eps"] == expected.eps
    runs = sorted((tmp_path / "study").glob("finetune-*"))
    assert len(runs) == 2
    clean = next((tmp_path / "study").glob("clean-*"))
    config = (runs[0] / "config.toml").read_text()
    # weights-only start from the clean model's selected checkpoint
    assert f'init_from = "{clean.resolve() / "checkpoints" / "best.pt"}"' in config
    assert "steps = 1" in config and "random_start = false" in config  # one-step FGM
    fgsm = json.loads(out)["fgsm"]
    assert [row["eps"] for row in fgsm["table"]] == [0.05, 0.1]
    assert fgsm["unstable_eps"] == next((r["eps"] for r in fgsm["table"] if r["collapsed"]), None)
    fgsm_config = next((tmp_path / "study").glob("fgsm-0.1-*")).joinpath("config.toml").read_text()
    assert 'name = "fgsm_rs"' in fgsm_config and 'overfit_action = "flag"' in fgsm_config


@pytest.mark.parametrize(
    "extra,key",
    [
        (["--eps", "0.2,0.1"], "--eps"),
        (["--eps", "0.1"], "--eps"),
        (["--eps", "0.1,0.1"], "--eps"),
        ([], "--eps"),
        (["--fgsm", "0.1"], "--fgsm"),
        (["--eps", "0.1,0.2", "--seeds", "0"], "--seeds"),
        (["--eps", "0.1,0.2", "--set", "data.train_size=100000"], "data.train_size"),
        (["--eps", "0.1,0.2", "--set", "data.train_size=0"], "data.train_size"),
        (["--fast", "--fast-eps", "0.1", "--fast-attack", "cw"], "--fast-attack"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, fast_run, extra, key):
    code, out, err = _critical(tmp_path, capsys, fast_run, *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robustlab critical-eps: error: {key}=")
    assert not (tmp_path / "study").exists() and not (tmp_path / "db").exists()
