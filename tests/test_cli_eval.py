"""``robustlab eval`` on every kind of model source, with cascades, flags, saved examples and state."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import torch

from conftest import sets
from robustlab.cli._sources import parse_model_args
from robustlab.cli.main import main
from robustlab.data import create_dataset
from robustlab.evaluation import RobustnessResult
from robustlab.models import create_model
from robustlab.store import ResultsStore


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys, fast_run):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(fast_run), "--out", "run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _eval(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_a_cascade_reports_per_attack_and_the_worst_case(trained, capsys) -> None:
    # A small budget, where this weak model keeps some robust points for every attack to work on.
    args = [
        "--attack",
        "fgsm,pgd,apgd-ce,square",
        "--eps",
        "0.02",
        "--steps",
        "10",
        "--queries",
        "100",
    ]
    result = _eval(capsys, "run", *args)
    per_attack = result["per_attack"]
    assert list(per_attack) == ["fgsm", "pgd", "apgd-ce", "square"]
    assert list(per_attack.values()) == sorted(per_attack.values(), reverse=True)
    assert result["robust_accuracy"] == per_attack["square"] <= result["natural_accuracy"]
    assert result["max_perturbation_norm"] <= 0.02 + 1e-6
    assert (
        0 < result["queries"]["mean"] <= 100
        and result["perturbation_stability"] >= result["robust_accuracy"]
    )
    assert result["flags"] == [] and result["run_id"] == trained["run_id"]
    stored = ResultsStore("runs/robustlab.db", create=False).evaluations(trained["run_id"])[-1]
    assert stored["robust_accuracy"] == result["robust_accuracy"]
    assert stored["details"]["per_attack"] == per_attack


def test_table_output_lists_each_attack_and_the_perturbation_norms(trained, capsys) -> None:
    assert main(["eval", "run", "--attack", "pgd,fgsm", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["attack", "robust", "acc", "stability", "CE", "loss", "seconds"]
    assert [line.split()[0] for line in out[2:-1]] == ["(natural)", "pgd", "fgsm", "overall"]
    norms = re.fullmatch(r"perturbation norm \(Linf, eps 0\.1\): mean (\S+), max (\S+)", out[-1])
    assert norms and 0 < float(norms[1]) <= float(norms[2]) <= 0.1 + 1e-6


def test_the_header_comes_before_the_work(trained, monkeypatch) -> None:
    import robustlab.cli.eval as eval_command

    events: list[str] = []
    attack = eval_command.evaluate_robustness
    monkeypatch.setattr(eval_command, "info", lambda message: events.append(message))
    monkeypatch.setattr(
        eval_command,
        "evaluate_robustness",
        lambda *args, **kwargs: events.append("attacking") or attack(*args, **kwargs),
    )
    assert main(["eval", "run", "--attack", "pgd,fgsm", "--n", "30", "--quiet"]) == 0
    header = events[0]
    assert events.index("attacking") == 1
    assert header == (
        f"run {trained['run_id']} last@3 on synthetic (30 test points): pgd, fgsm at Linf eps 0.1"
    )


def test_mean_perturbation_norm_never_exceeds_the_max() -> None:
    # Ten equal float32 norms of 0.1: their float32 mean rounds to 0.10000000894 > 0.10000000149.
    norms = torch.full((10,), 0.1)
    assert float(norms.mean()) > float(norms.max())  # the float32 failure this guards against
    flags = torch.ones(10, dtype=torch.bool)
    result = RobustnessResult(flags, flags, flags, norms, seconds=0.0)
    summary = result.summary()
    assert summary["mean_perturbation_norm"] <= summary["max_perturbation_norm"]
    assert summary["mean_perturbation_norm"] == summary["max_perturbation_norm"]


def test_checkpoint_file_and_save_adv(trained, tmp_path, capsys) -> None:
    result = _eval(capsys, "run/checkpoints/best.pt", "--n", "40", "--save-adv", "adv.pt")
    saved = torch.load(tmp_path / "adv.pt")
    assert saved["x_adv"].shape == (40, 3, 8, 8) and saved["y"].shape == (40,)
    assert float(saved["robust"].float().mean()) == result["robust_accuracy"]
    assert result["run_id"] == trained["run_id"] and result["source"].endswith("best.pt")
    test_x = create_dataset("synthetic", n_train=256, n_test=128).test_x[:40].float() / 255
    assert float((saved["x_adv"] - test_x).abs().amax()) <= 0.1 + 1e-6


def test_state_file_resumes_a_finished_evaluation(trained, tmp_path, capsys) -> None:
    first = _eval(capsys, "run", "--attack", "pgd,fgsm", "--state", "state.pt")
    assert (tmp_path / "state.pt").exists()
    again = _eval(capsys, "run", "--attack", "pgd,fgsm", "--state", "state.pt")
    assert again["per_attack"] == first["per_attack"]
    assert main(["eval", "run", "--attack", "pgd", "--state", "state.pt"]) == 2  # other attacks
    assert "other attacks" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--checkpoint", "best"], "another model"),  # best (epoch 1) is not last (epoch 3)
        (["--n", "100"], "other test inputs"),
        (["--seed", "1"], "another --seed"),
        (["--stability-labels", "true"], "another --stability-labels"),
    ],
)
def test_a_state_file_is_refused_for_another_model_data_or_seed(
    trained, capsys, args, fragment
) -> None:
    _eval(capsys, "run", "--attack", "fgsm", "--state", "state.pt")
    code = main(["eval", "run", "--attack", "fgsm", "--state", "state.pt", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert fragment in captured.err and "state.pt" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def _external_model(tmp_path) -> torch.nn.Module:
    torch.manual_seed(0)
    # A model that expects normalized inputs, as many published checkpoints do.
    return create_model("mlp", 10, 1, 8, width=32).net.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_with_mean_and_std(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    torch.jit.script(_external_model(tmp_path)).save(str(tmp_path / "model.ts"))
    result = _eval(
        capsys,
        "model.ts",
        "--data",
        "digits",
        "--eps",
        "0.1",
        "--mean",
        "0.3",
        "--std",
        "0.4",
        "--n",
        "50",
    )
    assert result["run_id"] is None and result["source"] == "model.ts" and result["n"] == 50
    assert result["data"] == "digits"
    (stored,) = ResultsStore("runs/robustlab.db", create=False).evaluations()
    assert stored["run_id"] is None and stored["source"] == "model.ts"


def test_module_function_source_and_train_mode_flag(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # left in train mode
        def softmaxed():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(dim=1)).eval()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _eval(capsys, "my_models:build", "--data", "digits", "--eps", "0.1", "--n", "30")
    assert [f["code"] for f in result["flags"]] == ["train_mode"]
    result = _eval(capsys, "my_models:softmaxed", "--data", "digits", "--eps", "0.1", "--n", "30")
    assert "probabilities" in [f["code"] for f in result["flags"]]
    assert (
        main(["eval", "my_models:softmaxed", "--data", "digits", "--eps", "0.1", "--n", "30"]) == 0
    )
    captured = capsys.readouterr()
    assert "warning [probabilities]" in captured.err
    sys.modules.pop("my_models", None)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--attack", "pgdd"], "valid:"),
        (["run", "--eps=-0.1"], "--eps"),
        (["run", "--attack", "fgsm", "--steps", "3"], "fgsm takes no such setting"),
        (["run", "--attack", "apgd-t", "--n", "20"], None),  # 10 classes: 9 targets allowed
        (["run", "--mean", "0.5", "--std", "0.5"], "normalizes its inputs itself"),
        (["nowhere.pt"], "not found"),
        (["nomodule:fn", "--data", "digits", "--eps", "0.1"], "cannot import"),
        (["run", "--attack", "autoattack", "--aa-version", "fast"], "version"),
        (
            ["run", "--attack", "pgd", "--aa-version", "plus"],
            "--aa-version='plus': pgd takes no such setting",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys, args, fragment) -> None:
    code = main(["eval", *args, "--json"])
    captured = capsys.readouterr()
    if fragment is None:
        assert code == 0
        return
    assert code == 2 and fragment in captured.err and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_external_model_needs_data_and_eps(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    torch.jit.script(_external_model(tmp_path)).save(str(tmp_path / "m.ts"))
    assert main(["eval", "m.ts", "--eps", "0.1"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["eval", "m.ts", "--data", "digits"]) == 2
    assert "--eps" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_apgd_t_with_too_many_targets_is_rejected(trained, capsys) -> None:
    # synthetic data has 10 classes: 10 target classes are one too many.
    code = main(["eval", "run", "--attack", "apgd-t", "--n", "10", "--json"])
    assert code == 0
    from robustlab.attacks import create_attack
    from robustlab.errors import ConfigError

    attack = create_attack("apgd-t", eps=0.1, targets=10)
    with pytest.raises(ConfigError, match="targets=10"):
        attack(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10)),
            torch.rand(2, 1, 2, 2),
            torch.tensor([0, 1]),
        )


def test_autoattack_on_fewer_classes_needs_fewer_targets(
    tmp_path, monkeypatch, capsys, fast_run
) -> None:
    monkeypatch.chdir(tmp_path)
    five = [*fast_run, "data.options.num_classes=5", "train.epochs=1"]
    assert main(["train", *sets(five), "--out", "five", "--quiet"]) == 0
    capsys.readouterr()
    budget = ["--attack", "autoattack", "--steps", "3", "--queries", "20", "--eps", "0.02"]
    assert main(["eval", "five", *budget, "--json"]) == 2
    assert "pass --targets 4" in capsys.readouterr().err
    result = _eval(capsys, "five", *budget, "--targets", "4")
    assert list(result["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]


MISFITS = """
import torch
from torch import nn


def cifar_sized():  # 32x32 grey images flattened: 1024 features, digits has 64
    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)).eval()


def colour():  # three input channels, digits has one
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def five_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()


def flat_output():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Flatten(0)).eval()
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("misfits:cifar_sized", ["(2, 1, 8, 8)", "takes 1024 features, the data has 64"]),
        ("misfits:colour", ["(2, 1, 8, 8)", "takes 3 channels, the data has 1"]),
        ("misfits.ts", ["(2, 1, 8, 8)", "takes 3 channels", "expected input[2, 1, 8, 8]"]),
        ("misfits:five_classes", ["returns (2, 5)", "expected logits of shape (2, 10)"]),
        ("misfits:flat_output", ["returns (20,)", "digits has 10 classes"]),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_one_line(
    tmp_path, monkeypatch, capsys, model, fragments
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "misfits.py").write_text(MISFITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    if model.endswith(".ts"):
        import misfits

        torch.jit.script(misfits.colour()).save(str(tmp_path / model))
    code = main(["eval", model, "--data", "digits", "--eps", "0.1", "--n", "20"])
    captured = capsys.readouterr()
    sys.modules.pop("misfits", None)
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith(f"robustlab eval: error: model='{model}': ")
    for fragment in fragments:
        assert fragment in captured.err


ZOO = """
import torch
from torch import nn

CALLS = []


def load_model(model_name, dataset="cifar10", threat_model="Linf", width=8):
    # The shape of RobustBench's loader: keyword arguments only, no wrapper needed.
    CALLS.append(dict(model_name=model_name, dataset=dataset, threat_model=threat_model, width=width))
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10)).eval()
"""


def test_module_function_takes_keyword_arguments(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo.py").write_text(ZOO)
    monkeypatch.syspath_prepend(str(tmp_path))
    model_args = [
        "model_name=Carmon2019Unlabeled",
        "dataset=digits",
        "threat_model=Linf",
        "width=16",
    ]
    sets = [part for arg in model_args for part in ("--model-arg", arg)]
    result = _eval(capsys, "zoo:load_model", *sets, "--data", "digits", "--eps", "0.1", "--n", "20")
    import zoo

    assert zoo.CALLS == [
        {
            "model_name": "Carmon2019Unlabeled",
            "dataset": "digits",
            "threat_model": "Linf",
            "width": 16,
        }
    ]
    assert result["source"] == (
        "zoo:load_model(model_name='Carmon2019Unlabeled', dataset='digits', "
        "threat_model='Linf', width=16)"
    )
    sys.modules.pop("zoo", None)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model-arg", "width"], "expected KEY=VALUE"),
        (["--model-arg", "colour=red"], "load_model() takes no argument 'colour'"),
        (["--model-arg", "width=1", "--model-arg", "width=2"], "width given twice"),
        ([], "missing a required argument: 'model_name'"),
    ],
)
def test_bad_model_arguments_are_one_line(tmp_path, monkeypatch, capsys, args, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo.py").write_text(ZOO)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["eval", "zoo:load_model", *args, "--data", "digits", "--eps", "0.1"])
    captured = capsys.readouterr()
    sys.modules.pop("zoo", None)
    assert code == 2 and fragment in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_model_arguments_are_only_for_module_function(trained, capsys) -> None:
    assert main(["eval", "run", "--model-arg", "width=16"]) == 2
    assert "only a module:function model takes arguments" in capsys.readouterr().err


def test_model_argument_values_are_literals_else_text() -> None:
    parsed = parse_model_args(
        ["n=28", "p=0.5", "flag=true", "none=None", "shape=(3, 32, 32)", "name=Linf", "eps=8/255"]
    )
    assert parsed == {
        "n": 28,
        "p": 0.5,
        "flag": True,
        "none": None,
        "shape": (3, 32, 32),
        "name": "Linf",
        "eps": "8/255",
    }
