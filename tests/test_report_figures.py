"""Report figures from the store (robustlab.report.figures) and ``robustlab show RUN --plot``:
each figure is written when its data exist and skipped when not, a width or λ keeps its colour
in every figure, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import UnknownNameError
from robustlab.report.figures import (
    FIGURES,
    SECTIONS,
    Selection,
    colour_map,
    list_figures,
    render_figures,
)
from robustlab.report.figures._base import TAB10, band
from robustlab.rundir import RunDirectory
from robustlab.store import ResultsStore
from robustlab.training.runner import fit, prepare

PNG = b"\x89PNG"
# The sweep: 2 widths x 2 λ, TRADES, tracked every 2 iterations, with a second seed of one cell.
GRID = [(16, 1.0, 0), (16, 6.0, 0), (32, 1.0, 0), (32, 6.0, 0), (32, 6.0, 1)]
# Smaller still than conftest's FAST_RUN: every run of the module's fixture in well under 1 s.
SMALLER = [
    "train.epochs=2",
    "eval.final=false",
    "data.options.n_train=128",
    "data.options.n_test=64",
    "data.val_size=32",
    "eval.n_train=32",
]


def _train(root: Path, store: ResultsStore, name: str, *overrides: str) -> None:
    from conftest import FAST_RUN

    config = build_config(None, [*FAST_RUN, *SMALLER, *overrides])
    run = RunDirectory.create(root / name, config, name, store=store.path)
    fit(prepare(config), run, name, store=store, show_progress=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five tiny TRADES runs (synthetic data, MLP, 2 epochs), a clean run with nothing optional
    measured, a WAR run, and margins and spectra diagnosed on two runs; ~10 s on one thread."""
    root = tmp_path_factory.mktemp("figures")
    store = ResultsStore(root / "store.db")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for width, lam, seed in GRID:
            _train(
                root,
                store,
                f"w{width}-lam{lam:g}-s{seed}",
                "method.name=trades",
                f"model.width={width}",
                f"method.lam={lam}",
                f"seed={seed}",
                "train.track_every=2",
                "eval.lipschitz_n=16",
            )
        _train(root, store, "clean", "method.name=clean", "eval.lipschitz_n=0")
        _train(
            root,
            store,
            "war",
            "method.name=trades",
            "method.lam_schedule=war",
            "method.zeta=1000",  # above l_nat / l_rob: λ rises
            "eval.lipschitz_n=0",
        )
        for name in ("w16-lam1-s0", "w32-lam1-s0"):
            argv = ["diagnose", str(root / name), "--what", "margins,spectra", "--n", "32"]
            assert main([*argv, "--store", str(store.path), "--json"]) == 0
    finally:
        torch.set_num_threads(previous)
    records = {r.run_id: r for r in store.runs()}
    return {"root": root, "store": store, "records": records}


def _grid(sweep: dict) -> list:
    return [sweep["records"][f"w{w}-lam{lam:g}-s{s}"] for w, lam, s in GRID]


@pytest.fixture(scope="module")
def drawn(sweep: dict, tmp_path_factory: pytest.TempPathFactory) -> list:
    out = tmp_path_factory.mktemp("report")
    return render_figures(sweep["store"], _grid(sweep), out)


def _stem(figure) -> str:
    return figure.path.stem


def test_every_figure_with_data_is_written(drawn: list) -> None:
    stems = [_stem(f) for f in drawn]
    for expected in (
        "metrics_vs_epoch",
        "metrics_vs_width",
        "losses",
        "lipschitz",
        "schedules",
        "iterations",
        "margins",  # the stored figures of the two diagnosed runs
        "spectra",
        "diagnostic_margins",  # and their comparison across runs
        "diagnostic_spectra",
    ):
        assert expected in stems, expected
    assert stems.count("margins") == 2 and stems.count("spectra") == 2
    # λ is constant in every run, no study is a critical-ε one, no landscape was measured.
    assert not {"lam", "diagnostic_landscape"} & set(stems)
    assert not any(s.startswith("critical_eps") for s in stems)
    for figure in drawn:
        assert figure.path.is_file() and figure.path.read_bytes()[:4] == PNG
        assert figure.title and figure.caption and figure.section in SECTIONS
    # Sweep figures belong to no run; a stored diagnostic figure to its run.
    by_stem = {_stem(f): f for f in drawn}
    assert by_stem["metrics_vs_epoch"].run_id is None
    assert {f.run_id for f in drawn if _stem(f) == "margins"} == {"w16-lam1-s0", "w32-lam1-s0"}
    # Sections in reading order.
    order = [SECTIONS.index(f.section) for f in drawn]
    assert order == sorted(order)


def test_series_pool_seeds_and_axes_are_the_varying_keys(sweep: dict) -> None:
    selection = Selection(sweep["store"], _grid(sweep))
    assert selection.axes == ["model.width", "method.lam"]
    series = selection.series()
    assert [s.label for s in series] == [
        "width 16, λ 1",
        "width 16, λ 6",
        "width 32, λ 1",
        "width 32, λ 6",
    ]
    assert [s.seeds for s in series] == [1, 1, 1, 2]
    assert selection.seeds_text() == "mean ± std over 1–2 seeds"
    # λ is the line style: two values, two styles; one width, one colour.
    assert series[0].linestyle != series[1].linestyle and series[0].colour == series[1].colour


def test_bands_are_mean_and_population_std_over_seeds() -> None:
    data = band([[(1, 0.2), (2, 0.4)], [(1, 0.4), (2, None)], [(1, math.nan)]])
    assert data.x == [1, 2] and data.n == [2, 1]
    assert data.mean == pytest.approx([0.3, 0.4]) and data.std == pytest.approx([0.1, 0.0])


@pytest.mark.parametrize(
    ("objective", "key"), [("natural", "train_nat_loss"), ("adversarial", "train_rob_loss")]
)
def test_connectivity_across_runs_draws_the_loss_the_curve_was_trained_on(objective, key) -> None:
    from robustlab.report.figures.diagnostics import COMPARISONS

    curve = {k: [9.0, 9.0] for k in ("train_nat_loss", "train_rob_loss", "test_rob_error")}
    curve[key] = [0.5, 0.25]
    summary = {"t": [0.0, 1.0], "objective": objective, "curve": curve}
    assert COMPARISONS["connectivity"].points(summary) == [(0.0, 0.5), (1.0, 0.25)]


def test_legends_write_budgets_as_budgets() -> None:
    from robustlab.report.figures._base import axis_label

    assert axis_label("attack.eps", 0.2) == "ε 0.2"  # not 51/255
    assert axis_label("attack.eps", 8 / 255) == "ε 8/255"


def test_tables_and_figures_agree_on_what_is_not_a_setting() -> None:
    from robustlab.report.figures._base import NOT_AXES as FIGURE_NOT_AXES
    from robustlab.report.selection import NOT_AXES

    assert {"threads", "train.on_nan", "seed"} <= NOT_AXES
    assert {"tag"} == (FIGURE_NOT_AXES - NOT_AXES)  # a table may have a row per tag


def test_colours_are_one_per_value_and_the_same_in_every_figure(sweep: dict, drawn: list) -> None:
    assert colour_map([64, 16, 32, 16]) == {16: TAB10[0], 32: TAB10[1], 64: TAB10[2]}
    selection = Selection(sweep["store"], _grid(sweep))
    widths = {w: selection.colour("model.width", w) for w in (16, 32)}
    lams = {lam: selection.colour("method.lam", lam) for lam in (1.0, 6.0)}
    assert widths == {16: TAB10[0], 32: TAB10[1]}
    # λ takes the next colours: a colour means one width or one λ in the whole report.
    assert lams == {1.0: TAB10[2], 6.0: TAB10[3]}
    from matplotlib.colors import to_hex

    seen: dict[str, str] = {}
    for figure in drawn:
        for label, colour in figure.legend.items():
            assert seen.setdefault(label, colour) == colour, (figure.path.name, label)
    assert seen["width 16, λ 1"] == to_hex(widths[16]) == seen["width 16, λ 6"]
    assert seen["width 32, λ 6"] == to_hex(widths[32])
    assert seen["λ 6"] == to_hex(lams[6.0])  # metrics_vs_width: one line per λ


def test_figures_without_their_data_are_skipped(sweep: dict, tmp_path: Path) -> None:
    """A clean run without Lipschitz, tracking or diagnostics draws only its curves."""
    store, records = sweep["store"], sweep["records"]
    files = render_figures(store, [records["clean"]], tmp_path / "clean")
    assert sorted(_stem(f) for f in files) == ["losses", "metrics_vs_epoch", "schedules"]
    assert all(f.run_id == "clean" for f in files)
    # A run with no epochs yet (just started) draws nothing and raises nothing.
    config = build_config(None, ["model.width=8"]).to_dict()
    store.upsert_run("empty", tmp_path / "empty", config)
    assert render_figures(store, [store.run("empty")], tmp_path / "none") == []
    assert render_figures(store, [], tmp_path / "nothing") == []


def test_a_moving_lambda_is_drawn(sweep: dict, tmp_path: Path) -> None:
    history = sweep["store"].epochs("war")
    assert len({v for m in history for v in m["lam_trace"]}) > 1  # WAR moved λ
    files = render_figures(sweep["store"], [sweep["records"]["war"]], tmp_path, names=["lam"])
    assert [_stem(f) for f in files] == ["lam"] and files[0].path.read_bytes()[:4] == PNG


def test_a_critical_eps_study_figure_is_taken_from_the_study(sweep: dict, tmp_path: Path) -> None:
    study = tmp_path / "study"
    (study / "adversarial").mkdir(parents=True)
    shutil.copyfile(sweep["root"] / "w16-lam1-s0" / "diagnostics" / "last@2" / "margins.png",
                    study / "critical_eps.png")  # fmt: skip
    (study / "critical_eps.json").write_text(json.dumps({"group": "abc", "critical_eps": 0.01}))
    store = ResultsStore(tmp_path / "store.db")
    store.upsert_run("s0", study / "adversarial" / "s0", build_config().to_dict())
    files = render_figures(store, [store.run("s0")], tmp_path / "out", names=["critical_eps"])
    assert len(files) == 1 and "ε* = 0.01" in files[0].title and files[0].section == "phase"


def test_an_unknown_figure_name_is_refused_before_anything_is_written(
    sweep: dict, tmp_path: Path
) -> None:
    with pytest.raises(UnknownNameError, match="metrics_vs_epoch"):
        render_figures(sweep["store"], _grid(sweep), tmp_path / "out", names=["metrics_vs_epoc"])
    assert not (tmp_path / "out").exists()
    assert set(list_figures()) == set(FIGURES.names())


def test_show_plot_writes_the_runs_figures_and_prints_their_paths(
    sweep: dict, capsys: pytest.CaptureFixture
) -> None:
    run_dir = sweep["root"] / "w16-lam1-s0"
    assert main(["show", str(run_dir), "--store", str(sweep["store"].path), "--plot"]) == 0
    out = capsys.readouterr().out
    paths = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    stems = {p.stem for p in paths}
    assert {"metrics_vs_epoch", "losses", "iterations", "margins", "spectra"} <= stems
    for path in paths:
        assert path.is_absolute() and path.read_bytes()[:4] == PNG
        assert path.is_relative_to(run_dir.resolve())
    # Curves in RUN/plots/; the diagnostics' figures where diagnose drew them.
    assert run_dir.resolve() / "plots" / "metrics_vs_epoch.png" in paths
    assert run_dir.resolve() / "diagnostics" / "last@2" / "margins.png" in paths


def test_show_plot_reads_a_run_directory_the_store_does_not_know(
    sweep: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep["root"] / "w32-lam1-s0", copy)
    shutil.rmtree(copy / "plots", ignore_errors=True)
    absent = tmp_path / "absent.db"
    assert main(["show", str(copy), "--store", str(absent), "--plot", "--json"]) == 0
    plots = json.loads(capsys.readouterr().out)["plots"]
    assert {Path(p).stem for p in plots} == {
        "metrics_vs_epoch", "losses", "lipschitz", "schedules", "iterations"
    }  # fmt: skip
    assert all(Path(p).parent == copy / "plots" for p in plots)
    assert not absent.exists()


def test_show_plot_bad_input_is_one_line_and_exit_2(
    sweep: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = str(sweep["store"].path)
    assert main(["show", "no-such-run", "--store", store, "--plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-run" in err
    copy = tmp_path / "copy"
    shutil.copytree(sweep["root"] / "clean", copy)
    (copy / "plots").write_text("in the way")
    assert main(["show", str(copy), "--store", str(tmp_path / "absent.db"), "--plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plots" in err and "is a file" in err
    assert (copy / "plots").read_text() == "in the way"
