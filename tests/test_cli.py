"""The command line end to end: train, eval, runs, show, demo (happy paths; errors in test_cli_errors)."""

from __future__ import annotations

import json

import pytest

from conftest import sets
from robustlab.cli.main import main
from robustlab.config import build_config


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys, fast_run):
    """A finished tiny run in tmp_path/run, trained through the CLI."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(fast_run), "--out", "run", "--json"]) == 0
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
    # The previous good last checkpoint stays until the new one is verified (issue 14, point 2).
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "last.pt",
        "last.prev.pt",
        "best.pt",
    }
    info = json.loads((run / "run.json").read_text())
    assert info["run_id"] == trained["run_id"] and info["status"] == "finished" and info["torch"]
    assert info["wall_time_s"] > 0 and info["seed"] == 0
    saved = build_config(run / "config.toml")
    assert saved.data.name == "synthetic" and saved.attack.alpha == pytest.approx(2.5 * 0.1 / 3)
    assert (tmp_path / "runs" / "robustlab.db").exists()


def test_train_prints_a_table_without_json(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets([*fast_run, "train.epochs=1"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "natural acc" in out and "robust acc" in out and "stability" in out
    (run_dir,) = (tmp_path / "runs").glob("*-pgd_at-mlp-*")  # default run directory
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1


def test_train_from_a_toml_file_with_overrides(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('[attack]\neps = "8/255"\nsteps = 2\n[train]\nepochs = 2\n')
    others = [item for item in fast_run if not item.startswith(("attack.", "train.epochs"))]
    assert (
        main(["train", "c.toml", *sets(others), "--set", "train.epochs=1", "--out", "r", "--json"])
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
    last = trained["selection"]["last"]
    assert row["status"] == "finished" and row["rob_acc"] == last["robust_accuracy"]
    assert row["measured"] == "last@3 pgd-3 Linf ε=0.1 test" == last["label"]
    assert main(["show", trained["run_id"][:12]]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 5 and "test rob" in out
    assert main(["show", "run"]) == 0  # a run directory works too
    assert trained["run_id"] in capsys.readouterr().out


def _untimed_metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def test_demo_runs_both_methods_and_prints_the_table(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    settings = ["model.width=32", "eval.n_train=0"]
    assert main(["demo", "--epochs", "2", *sets(settings), "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header + 2].startswith("clean") and lines[header + 3].startswith("pgd_at")
    assert "natural acc" in out and "robust acc" in out and "stability" in out
    # Point 14: each robust accuracy says what it measured (weights, attack, threat model, split).
    assert "measured" in lines[header]
    assert lines[header + 2].endswith("last@2 pgd-50x3 Linf ε=0.2 test")
    assert lines[header + 3].endswith("last@2 pgd-50x3 Linf ε=0.2 test")
    assert lines[header - 1].startswith("digits, mlp width 32, PGD-50 x 3 restarts")
    assert len(list((tmp_path / "runs" / "demo").iterdir())) == 2
    # Point 17: the demo's second run equals `train` of the same config and seed (it used to
    # inherit the random state the first run left behind).
    (demo_run,) = (tmp_path / "runs" / "demo").glob("*-pgd_at-*")
    train = ["method.name=pgd_at", "train.epochs=2", *settings]
    assert main(["train", *sets(train), "--out", "alone", "--quiet"]) == 0
    assert _untimed_metrics(tmp_path / "alone") == _untimed_metrics(demo_run)


def test_python_dash_m_entry_point(tmp_path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "robustlab", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("robustlab ")


# ---------------------------------------------------------------------------------------------
# Point 14: every robust accuracy is printed with what it measured, and listed once.


def test_tables_label_each_robust_accuracy(trained, tmp_path, capsys) -> None:
    label = "last@3 pgd-3 Linf ε=0.1 test"  # fast_run: eval.steps=3, eval.eps=0.1
    assert main(["train", "--resume", "run", "--quiet"]) == 0  # a finished run: nothing to train
    train_table = capsys.readouterr().out
    assert label in train_table and "best@" in train_table and "measured" in train_table
    assert main(["runs"]) == 0
    assert label in capsys.readouterr().out
    assert main(["show", "run"]) == 0
    shown = capsys.readouterr().out
    assert "per epoch: pgd-3 Linf ε=0.1 on train[:64], val, test" in shown
    evaluations = shown[shown.index("\nevaluations") :]
    assert "measured" in evaluations and label in evaluations
    assert main(["eval", "run", "--steps", "7", "--restarts", "2", "--n", "50", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["show", "run"]) == 0
    assert "last@3 pgd-7x2 Linf ε=0.1 test[:50]" in capsys.readouterr().out


def test_show_lists_one_evaluation_once(trained, capsys) -> None:
    """Resuming a finished run re-ran its final evaluation and stored it a second time, and
    `eval RUN` measured last@N under the same attack again with a different random stream:
    one measurement, up to three rows and two numbers. Now the final evaluation is seeded as
    `eval --seed` is, and the store keeps one row per measurement."""
    assert main(["show", "run", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)["evaluations"]
    assert [e["source"].split("@")[0] for e in before] == ["last", "best"]
    assert main(["train", "--resume", "run", "--quiet", "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "run", "--json"]) == 0  # the run's own attack, seed 0, whole test set
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["show", "run", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)["evaluations"]
    labels = [e["label"] for e in after]
    assert len(labels) == len(set(labels)) == 2, labels
    last = next(e for e in after if e["source"].startswith("last"))
    first_last = next(e for e in before if e["source"].startswith("last"))
    assert evaluated["robust_accuracy"] == last["robust_accuracy"] == first_last["robust_accuracy"]
    assert evaluated["perturbation_stability"] == first_last["perturbation_stability"]


def test_labels_name_attack_steps_restarts_eps_and_split() -> None:
    from robustlab.attacks import create_attack
    from robustlab.report import attack_settings, evaluation_label, format_eps

    attacks = {
        "pgd": create_attack("pgd", eps=8 / 255, steps=50, restarts=3),
        "square": create_attack("square", eps=8 / 255, queries=1000),
    }
    settings = attack_settings(attacks)
    assert evaluation_label("best@12", settings, "Linf", 8 / 255, "test[:1000]") == (
        "best@12 pgd-50x3+square-1000q Linf ε=8/255 test[:1000]"
    )
    auto = attack_settings({"autoattack": create_attack("autoattack", eps=0.5, norm="L2")})
    assert (
        evaluation_label("last@30", auto, "L2", 0.5) == "last@30 autoattack-standard L2 ε=0.5 test"
    )
    assert format_eps(0.2) == "0.2" and format_eps(0.0314) == "0.0314"
    assert evaluation_label(None, None, "Linf", 0.1, attack="pgd") == "pgd Linf ε=0.1 test"
