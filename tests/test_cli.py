"""The command line end to end: train, eval, runs, show, demo (happy paths; errors in test_cli_errors)."""

from __future__ import annotations

import json

import pytest

from robustlab.cli.main import main
from robustlab.config import build_config


def _sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys, fast_run):
    """A finished tiny run in tmp_path/run, trained through the CLI."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *_sets(fast_run), "--out", "run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_json_is_one_object_with_final_and_best(trained, tmp_path) -> None:
    assert set(trained) == {"run_id", "run_dir", "final", "best", "selection"}
    assert trained["final"]["epoch"] == 3 and 0 <= trained["final"]["test_rob_acc"] <= 1
    assert trained["best"]["val_rob_acc"] >= trained["final"]["val_rob_acc"]
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.toml",
        "run.json",
        "metrics.jsonl",
        "checkpoints",
    }
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    info = json.loads((run / "run.json").read_text())
    assert info["run_id"] == trained["run_id"] and info["status"] == "finished" and info["torch"]
    assert info["wall_time_s"] > 0 and info["seed"] == 0
    saved = build_config(run / "config.toml")
    assert saved.data.name == "synthetic" and saved.attack.alpha == pytest.approx(2.5 * 0.1 / 3)
    assert (tmp_path / "runs" / "robustlab.db").exists()


def test_train_prints_a_table_without_json(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *_sets([*fast_run, "train.epochs=1"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "natural acc" in out and "robust acc" in out and "stability" in out
    (run_dir,) = (tmp_path / "runs").glob("*-pgd_at-mlp-*")  # default run directory
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1


def test_train_from_a_toml_file_with_overrides(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('[attack]\neps = "8/255"\nsteps = 2\n[train]\nepochs = 2\n')
    others = [item for item in fast_run if not item.startswith(("attack.", "train.epochs"))]
    assert (
        main(["train", "c.toml", *_sets(others), "--set", "train.epochs=1", "--out", "r", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["final"]["epoch"] == 1
    saved = build_config(tmp_path / "r" / "config.toml")
    assert (
        saved.attack.eps == pytest.approx(8 / 255)
        and saved.attack.steps == 2
        and saved.train.epochs == 1
    )


def test_eval_json_and_store(trained, tmp_path, capsys) -> None:
    assert main(["eval", "run", "--eps", "0", "--json"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert (
        zero["robust_accuracy"] == zero["natural_accuracy"]
        and zero["perturbation_stability"] == 1.0
    )
    assert main(["eval", "run", "--eps", "1/10", "--steps", "5", "--n", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("natural_accuracy", "robust_accuracy", "perturbation_stability", "n", "seconds"):
        assert key in result
    assert result["n"] == 50 and result["robust_accuracy"] <= result["natural_accuracy"]
    assert result["max_perturbation_norm"] <= 0.1 + 1e-6
    assert main(["eval", "run", "--attack", "fgsm,pgd", "--checkpoint", "best", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["robust_accuracy"] <= min(both["per_attack"].values())
    assert main(["show", trained["run_id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # The final selection stored two (last, best); the three evaluations above follow.
    assert len(shown["epochs"]) == 3 and len(shown["evaluations"]) == 5
    assert [e["source"].split("@")[0] for e in shown["evaluations"][:2]] == ["last", "best"]
    assert shown["evaluations"][3]["robust_accuracy"] == result["robust_accuracy"]


def test_eval_prints_a_table(trained, capsys) -> None:
    assert main(["eval", "run", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("attack") and "pgd" in out


def test_runs_and_show_tables(trained, capsys) -> None:
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert trained["run_id"] in out and "synthetic" in out and "3/3" in out
    assert main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert row["status"] == "finished" and row["test_rob_acc"] == trained["final"]["test_rob_acc"]
    assert main(["show", trained["run_id"][:12]]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 5 and "test rob" in out
    assert main(["show", "run"]) == 0  # a run directory works too
    assert trained["run_id"] in capsys.readouterr().out


def test_demo_runs_both_methods_and_prints_the_table(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        ["demo", "--epochs", "2", "--set", "model.width=32", "--set", "eval.n_train=0", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header + 2].startswith("clean") and lines[header + 3].startswith("pgd_at")
    assert "natural acc" in out and "robust acc" in out and "stability" in out
    assert len(list((tmp_path / "runs" / "demo").iterdir())) == 2


def test_python_dash_m_entry_point(tmp_path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "robustlab", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("robustlab ")
