"""``robustlab diagnose``: every measurement through the command line, the store, the figures,
every kind of model source, and bad input refused before anything is written (issues 9, 10)."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import sets
from robustlab.cli import diagnose as diagnose_cli
from robustlab.cli.main import main
from robustlab.diagnostics import DIAGNOSTICS, DiagnosticResult, list_diagnostics
from robustlab.models import create_model
from robustlab.store import ResultsStore
from robustlab.training.checkpoint import load_checkpoint, save_checkpoint
from robustlab.training.runner import build_model

# The measurements diagnose has a spec for (their options and tables).
SPECIFIED = sorted(diagnose_cli.SPECS)
# Small settings for the parameter-space measurements (their defaults take seconds); BEST is
# the run's best checkpoint, the other end of connectivity's path.
SMALL = {
    "hessian": ["--k", "3"],
    "landscape": ["--points", "3"],
    "perturbation_similarity": ["--a", "0,0.5"],
    "connectivity": ["--with", "BEST", "--epochs", "2", "--points", "5"],
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished tiny run (synthetic 3x8x8 data, MLP; 256 training points less 64 for
    validation), trained once for the module, with its own store."""
    from conftest import FAST_RUN

    root = tmp_path_factory.mktemp("diagnose")
    out, store = root / "run", root / "store.db"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["train", *sets(FAST_RUN), "--out", str(out), "--store", str(store), "--quiet"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    return {"run": out, "store": store, "run_id": run_id}


@pytest.fixture(scope="module")
def narrow(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A robustlab checkpoint of the run's model family and data at another width (16)."""
    state = load_checkpoint(trained["run"] / "checkpoints" / "last.pt")
    spec = {**state["model_spec"], "width": 16}
    path = tmp_path_factory.mktemp("narrow") / "narrow.pt"
    save_checkpoint(path, {"model": build_model(spec).state_dict(), "model_spec": spec})
    return path


def _diagnose(capsys, *args: str) -> dict:
    capsys.readouterr()
    code = main(["diagnose", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)  # exactly one object: anything else fails to parse


def _png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk; fails for anything that is not a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def _check_png(path: str | Path) -> None:
    width, height = _png_size(path)
    assert Path(path).stat().st_size > 5000  # drawn, not an empty canvas
    assert 600 <= width <= 1600 and 200 <= height <= 700  # about 6x4 in at 150 dpi


@pytest.mark.parametrize("name", SPECIFIED)
def test_each_measurement_is_measured_stored_and_drawn(trained, capsys, name, one_thread) -> None:
    kind = DIAGNOSTICS.meta(name)["data"]
    best = str(trained["run"] / "checkpoints" / "best.pt")
    small = [arg.replace("BEST", best) for arg in SMALL.get(name, [])]
    argv = [str(trained["run"]), "--what", name, "--split", "both", "--n", "24", "--steps", "2"]
    result = _diagnose(capsys, *argv, *small)
    assert result["run_id"] == trained["run_id"] and result["source"] == "last@3"
    summary = result[name]
    rows = ResultsStore(trained["store"], create=False).diagnostics(trained["run_id"], name)
    by_id = {row["diag_id"]: row for row in rows}
    stored = [by_id[i] for i in result["ids"][name]]
    if kind == "points":
        assert list(summary) == ["train", "test"]
        assert [row["split"] for row in stored] == ["train", "test"]
        assert [row["n"] for row in stored] == [24, 24]
        assert [row["summary"] for row in stored] == [summary["train"], summary["test"]]
    else:
        (row,) = stored
        assert row["summary"] == summary
        assert row["split"] == {"train_test": "train+test", "shapes": None}[kind]
    assert all(row["run_id"] == trained["run_id"] for row in stored)
    # One figure of both splits where the plot overlays them, else one per split.
    one = kind != "points" or DIAGNOSTICS.meta(name).get("plot_splits")
    names = [f"{name}.png"] if one else [f"{name}-train.png", f"{name}-test.png"]
    plots = result["plots"][name]
    assert plots == [str(trained["run"] / "diagnostics" / "last@3" / n) for n in names]
    assert {row["plot"] for row in stored} == set(plots)
    for plot in plots:
        _check_png(plot)


def test_the_attack_defaults_to_the_runs_evaluation_attack(trained, capsys, one_thread) -> None:
    # FAST_RUN: eval.steps = 3 at attack.eps = 0.1 (eval.eps unset takes it).
    result = _diagnose(capsys, str(trained["run"]), "--what", "stability,gaps", "--n", "16")
    for name in ("stability", "gaps"):
        settings = result[name]["settings"] if name == "gaps" else result[name]["test"]["settings"]
        assert settings["attack_settings"] == [{"name": "pgd", "steps": 3, "restarts": 1}]
        assert settings["eps"] == pytest.approx(0.1) and settings["norm"] == "Linf"
    assert result["gaps"]["n_train"] == result["gaps"]["n_test"] == 16


def test_eps_list_reaches_loss_variation_and_one_eps_the_attack(trained, capsys) -> None:
    result = _diagnose(
        capsys,
        str(trained["run"]),
        "--what",
        "loss_variation",
        "--eps",
        "1/255,3/255",
        "--n",
        "8",
        "--steps",
        "2",
    )
    assert result["loss_variation"]["test"]["eps"] == pytest.approx([1 / 255, 3 / 255])
    result = _diagnose(
        capsys, str(trained["run"]), "--what", "stability,lipschitz", "--eps", "0.05", "--n", "8"
    )
    assert result["stability"]["test"]["settings"]["eps"] == 0.05
    assert result["lipschitz"]["test"]["eps"] == 0.05


def test_train_split_is_the_runs_training_split(trained, capsys) -> None:
    result = _diagnose(capsys, str(trained["run"]), "--what", "margins", "--split", "train")
    assert list(result["margins"]) == ["train"]
    assert result["margins"]["train"]["n"] == 256 - 64  # the validation points are not in it


def test_human_output_is_a_labelled_table_per_measurement(trained, capsys) -> None:
    capsys.readouterr()
    argv = ["diagnose", str(trained["run"]), "--what", "margins,gaps,spectra", "--n", "16"]
    assert main([*argv, "--split", "both"]) == 0
    out, err = capsys.readouterr()
    titles = [
        line for line in out.splitlines() if line.startswith(("margins:", "gaps:", "spectra:"))
    ]
    assert titles[0] == "margins: last@3; norm Linf"
    assert titles[1] == "gaps: last@3; attack pgd-3 Linf eps 0.1"
    assert titles[2] == "spectra: last@3"
    lines = out.splitlines()
    margins_rows = lines[lines.index(titles[0]) + 3 : lines.index(titles[0]) + 5]
    assert [row.split()[:2] for row in margins_rows] == [["train", "16"], ["test", "16"]]
    assert "adversarial error" in out and "spectral complexity" in out
    assert err.splitlines()[0].startswith(f"run {trained['run_id']} last@3 on synthetic")
    assert "stored in" in err and str(trained["store"]) in err


def test_diagnose_from_another_directory_writes_only_to_the_run(
    trained, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _diagnose(capsys, str(trained["run"]), "--what", "margins", "--n", "8")
    assert list(tmp_path.iterdir()) == []  # no ./runs, no ./diagnostics
    assert result["store"] == str(trained["store"])
    assert Path(result["plots"]["margins"][0]).is_relative_to(trained["run"])
    assert ResultsStore(trained["store"], create=False).diagnostics(trained["run_id"], "margins")


def test_a_checkpoint_file_of_the_run_is_measured_against_the_run(trained, capsys) -> None:
    checkpoint = trained["run"] / "checkpoints" / "best.pt"
    result = _diagnose(capsys, str(checkpoint), "--what", "spectra")
    assert result["run_id"] == trained["run_id"]
    assert Path(result["out"]).name.startswith("best@")


def _external_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", 10, 1, 8, width=16).net.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_target(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    ).eval()  # fmt: skip
    torch.jit.script(conv).save(str(tmp_path / "model.ts"))
    result = _diagnose(
        capsys, "model.ts", "--data", "digits", "--what", "margins,spectra", "--n", "20"
    )
    assert result["run_id"] is None and result["source"] == "model.ts"
    assert result["margins"]["test"]["n"] == 20
    # Scripted layers are found (by their original class names): linear exact, conv by kernel.
    layers = result["spectra"]["layers"]
    assert [layer["kind"] for layer in layers] == ["conv", "linear"]
    assert result["out"] == str((tmp_path / "diagnostics" / "model").resolve())
    for name in ("margins", "spectra"):
        _check_png(result["plots"][name][0])
    rows = ResultsStore(tmp_path / "runs" / "robustlab.db", create=False).diagnostics()
    assert {row["name"] for row in rows} == {"margins", "spectra"}
    assert all(row["run_id"] is None and row["source"] == "model.ts" for row in rows)


def test_module_function_target_gets_pgd_20(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "diag_models.py").write_text(
        textwrap.dedent("""
        import torch
        def build(width=8):
            torch.manual_seed(0)
            return torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10)
            ).eval()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["diag_models:build", "--model-arg", "width=12", "--data", "digits", "--eps", "0.1"]
    result = _diagnose(capsys, *args, "--what", "gaps,stability", "--n", "10", "--out", "figs")
    sys.modules.pop("diag_models", None)
    assert result["source"] == "diag_models:build(width=12)"
    assert result["gaps"]["settings"]["attack_settings"][0]["steps"] == 20  # PGD-20 outside a run
    assert result["gaps"]["n_train"] == result["gaps"]["n_test"] == 10
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["gaps.png", "stability.png"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["RUN", "--what", "margin"], "valid: " + ", ".join(list_diagnostics())),
        (["RUN", "--what", "margins,gapz"], "did you mean 'gaps'"),
        (["RUN", "--what", ","], "one or more of"),
        (
            ["RUN", "--what", "loss_variation", "--eps", "1/255,two"],
            "--eps='1/255,two': 'two' is not",
        ),
        (["RUN", "--what", "loss_variation", "--eps", "1/0"], "'1/0' is not a number"),
        (["RUN", "--what", "margins", "--eps", "2"], "must be in [0, 1] for Linf"),
        (["RUN", "--what", "gaps", "--eps", "1/255,2/255"], "gaps takes one budget"),
        (["RUN", "--what", "margins", "--n", "0"], "--n=0: must be > 0"),
        (["RUN", "--what", "margins", "--n", "-5"], "--n=-5: must be > 0"),
        (["RUN", "--what", "gaps", "--attack", "pgd,fgsm"], "gaps takes one attack"),
        (["RUN", "--what", "margins", "--out", "RUN/config.toml"], "is a file"),
        (["model.ts", "--what", "margins", "--split", "train"], "--split='train': the training"),
        (["model.ts", "--what", "gaps", "--eps", "0.1"], "--what='gaps': the training split"),
        (["model.ts", "--what", "margins"], "--data"),
        (["model.ts", "--what", "stability", "--data", "digits"], "--eps=None: required"),
        # Issue 10's parameter-space measurements.
        (["RUN", "--what", "hessian", "--k", "0"], "--k=0: must be >= 1"),
        (["RUN", "--what", "hessian", "--k", "-2"], "--k=-2: must be >= 1"),
        (["RUN", "--what", "hessian", "--k", "99999"], "--k=99999: between 1 and the number of"),
        (["RUN", "--what", "hessian", "--solver", "lanczoz"], "did you mean 'lanczos'"),
        (["RUN", "--what", "hessian", "--objective", "robust"], "--objective='robust': unknown"),
        (
            ["RUN", "--what", "connectivity", "--with", "NARROW"],
            "--with='NARROW': NormalizedModel with 3,530 parameters: not the architecture of",
        ),
        (["RUN", "--what", "connectivity"], "--with=None: connectivity needs"),
        (["RUN", "--what", "connectivity", "--with", "RUN", "--order", "5"], "one of 2, 3, 4"),
        (["RUN", "--what", "connectivity", "--with", "RUN", "--points", "1"], "--points=1: at "),
        (
            ["RUN", "--what", "connectivity", "--with", "RUN", "--save-middle", "RUN"],
            "is a directory",
        ),
        (
            ["RUN", "--what", "landscape", "--directions", "eigen"],
            "--directions='eigen': unknown name; valid: hessian, random",
        ),
        (["RUN", "--what", "landscape", "--dims", "3"], "--dims='3': one of 1, 2"),
        (["RUN", "--what", "landscape", "--points", "0"], "--points=0: a grid with no points"),
        (["RUN", "--what", "perturbation_similarity", "--a", ","], "--a=',': a grid with no"),
        (["RUN", "--what", "perturbation_similarity", "--a", "0,x"], "--a='x': expected a number"),
        (["RUN", "--what", "margins", "--k", "3"], "--k='3': read only by hessian"),
    ],
)
@pytest.mark.parametrize("output", [["--json"], []])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    trained, narrow, tmp_path, monkeypatch, capsys, args, fragment, output
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.jit.script(_external_mlp()).save(str(tmp_path / "model.ts"))
    run = str(trained["run"])
    argv = [arg.replace("RUN", run).replace("NARROW", str(narrow)) for arg in args]
    rows_before = len(ResultsStore(trained["store"], create=False).diagnostics())
    figures_before = sorted((trained["run"] / "diagnostics").rglob("*"))
    capsys.readouterr()
    code = main(["diagnose", *argv, *output])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    # One line: refused before the header that announces the work, with or without --json.
    assert len(err.strip().splitlines()) == 1 and err.startswith("robustlab diagnose: error: ")
    assert fragment.replace("NARROW", str(narrow)) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]  # no store, no figures
    assert len(ResultsStore(trained["store"], create=False).diagnostics()) == rows_before
    assert sorted((trained["run"] / "diagnostics").rglob("*")) == figures_before


def test_json_keys_of_the_command_are_no_measurement_names() -> None:
    assert not set(diagnose_cli.RESERVED_KEYS) & set(list_diagnostics())


class _FakeResult(DiagnosticResult):
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def summary(self) -> dict:
        return {"n": self.n, "seed": self.seed, "nested": {"value": 1.5}}


def _fake(model, x, y, *, seed: int = 0, batch_size: int = 512, bins: int = 5) -> _FakeResult:
    """A measurement registered without a diagnose spec."""
    return _FakeResult(len(y), seed)


def _fake_plot(result, path):
    assert isinstance(result, _FakeResult)  # no plot_splits: never given {split: result}
    from robustlab.diagnostics._plot import new_figure, save

    figure, (axis,) = new_figure()
    axis.bar([0], [result.n])
    axis.set_title("fake")
    return save(figure, path)


def _needs_option(model, x, y, *, required: float) -> _FakeResult:
    return _FakeResult(len(y), 0)


def _register(monkeypatch, name, function, **meta) -> None:
    monkeypatch.setitem(DIAGNOSTICS._entries, name, function)
    monkeypatch.setitem(DIAGNOSTICS._meta, name, meta)


def test_a_measurement_without_a_spec_runs_generically(trained, monkeypatch, capsys) -> None:
    _register(monkeypatch, "fake", _fake, data="points", attack=False, plot=_fake_plot)
    argv = [str(trained["run"]), "--what", "fake", "--split", "both", "--n", "6", "--seed", "7"]
    result = _diagnose(capsys, *argv)
    # The generic options (seed, batch size) reach it; one figure per split.
    assert result["fake"]["train"]["seed"] == 7 and result["fake"]["test"]["n"] == 6
    assert [Path(p).name for p in result["plots"]["fake"]] == ["fake-train.png", "fake-test.png"]
    capsys.readouterr()
    assert main(["diagnose", *argv]) == 0
    out = capsys.readouterr().out
    assert "nested.value" in out and "train" in out.splitlines()[1]  # the generic table


def test_a_required_option_diagnose_cannot_set_is_one_line(trained, monkeypatch, capsys) -> None:
    _register(monkeypatch, "needy", _needs_option, data="points", attack=False)
    assert main(["diagnose", str(trained["run"]), "--what", "needy"]) == 2
    assert "needs its option 'required'" in capsys.readouterr().err


def test_hessian_options_reach_it_and_the_table_lists_the_eigenvalues(trained, capsys) -> None:
    argv = [str(trained["run"]), "--what", "hessian", "--n", "16", "--k", "4"]
    argv += ["--trace-samples", "6", "--density-runs", "1", "--density-steps", "8"]
    argv += ["--normalize-samples", "2", "--normalize-radius", "0.5", "--objective", "natural"]
    summary = _diagnose(capsys, *argv)["hessian"]["test"]
    assert summary["solver"] == "lanczos" and summary["objective"] == "natural"
    assert len(summary["eigenvalues"]) == 4 and summary["trace_samples"] == 6
    assert len(summary["density"]["nodes"][0]) == 8 and len(summary["random_losses"]) == 2
    assert summary["normalize_radius"] == 0.5
    assert "attack" not in summary["settings"]  # the natural loss is measured without one
    capsys.readouterr()
    assert main(["diagnose", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("rank")))
    rows = [line.split() for line in lines[header + 2 : header + 6]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    for row, value, normalized in zip(
        rows, summary["eigenvalues"], summary["normalized_eigenvalues"], strict=True
    ):
        assert float(row[1]) == pytest.approx(value, rel=1e-3)
        assert float(row[2]) == pytest.approx(normalized, rel=1e-3)
    footer = "\n".join(lines[header + 6 :])
    assert "6 Hutchinson samples" in footer and "1 SLQ run(s) x 8 steps" in footer
    power = _diagnose(capsys, *argv[:3], "--n", "8", "--k", "1", "--solver", "power")
    assert power["hessian"]["test"]["solver"] == "power"


def test_landscape_and_similarity_options_reach_them(trained, capsys) -> None:
    argv = [str(trained["run"]), "--what", "landscape,perturbation_similarity", "--n", "12"]
    argv += ["--directions", "hessian", "--dims", "1", "--points", "5", "--radius", "0.5"]
    argv += ["--a", "0,1/4", "--random-directions", "2", "--repeats", "2", "--steps", "2"]
    result = _diagnose(capsys, *argv)
    surface, similarity = result["landscape"]["test"], result["perturbation_similarity"]["test"]
    assert surface["coords"] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert surface["directions"] == "hessian" and len(surface["eigenvalues"]) == 1
    assert similarity["a"] == [0.0, 0.25] and len(similarity["directions"]) == 3
    assert similarity["repeats"] == 2
    assert [row[0] for row in similarity["similarity"]] == [1.0, 1.0, 1.0]  # a = 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_natural_loss_needs_no_budget_outside_a_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    torch.jit.script(_external_mlp()).save(str(tmp_path / "model.ts"))
    argv = ["model.ts", "--data", "digits", "--what", "hessian,landscape", "--n", "8"]
    result = _diagnose(capsys, *argv, "--objective", "natural", "--k", "2", "--points", "3")
    assert result["hessian"]["test"]["objective"] == "natural"
    assert result["landscape"]["test"]["loss"][1][1] == pytest.approx(
        result["hessian"]["test"]["loss"], rel=1e-5
    )  # the surface at θ is the loss the Hessian is taken of


def test_connectivity_saves_its_middle_point_as_a_checkpoint(trained, tmp_path, capsys) -> None:
    from robustlab.cli._sources import load_model
    from robustlab.cli._target import load_dataset

    middle = tmp_path / "middle.pt"
    argv = [str(trained["run"]), "--what", "connectivity", "--n", "16", "--points", "3"]
    argv += ["--with", str(trained["run"] / "checkpoints" / "best.pt"), "--order", "3"]
    argv += ["--epochs", "2", "--lr", "0.1", "--objective", "natural", "--save-middle", str(middle)]
    summary = _diagnose(capsys, *argv)["connectivity"]
    assert summary["order"] == 3 and summary["epochs"] == 2 and summary["t"] == [0.0, 0.5, 1.0]
    assert summary["objective"] == "natural" and summary["settings"]["lr"] == 0.1
    assert summary["saved"] == {"middle checkpoint (t = 0.5)": str(middle)}
    loaded = load_model(str(middle), "last", torch.device("cpu"))  # a robustlab checkpoint
    dataset = load_dataset(loaded.config)
    x, y = dataset.test_x[:16].float() / 255, dataset.test_y[:16]
    if dataset.test_x.dtype != torch.uint8:
        x = dataset.test_x[:16]
    with torch.no_grad():
        error = float((loaded.model(x).argmax(1) != y).float().mean())
    assert error == summary["curve"]["test_nat_error"][1]  # the curve's point at t = 0.5
