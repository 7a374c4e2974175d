"""``robustlab report``: the tables equal the store's aggregates, the CSV parses, the HTML page
is self-contained and opens in a real headless browser, the report degrades to tables without
matplotlib, and bad input is one line with exit 2 and nothing written.

The tiny sweep (two widths x two λ x two seeds of TRADES on digits, 2 epochs, one thread) is
trained once per module, in this process (~4 s).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from robustlab.cli.main import main
from robustlab.store import ResultsStore
from robustlab.store.sqlite import RunRecord

SWEEP = "report-tiny"
SPEC = f"""
name = "{SWEEP}"
seeds = [0, 1]

[base]
"data.name" = "digits"
"model.name" = "mlp"
"model.depth" = 1
"method.name" = "trades"
"attack.eps" = 0.1
"attack.steps" = 2
"eval.steps" = 2
"eval.n" = 100
"eval.n_train" = 64
"eval.lipschitz_n" = 0
"train.epochs" = 2
"train.batch_size" = 128
"device" = "cpu"

[axes]
"model.width" = [8, 32]
"method.lam" = [1, 6]
"""
WIDTHS, LAMS = [8, 32], [1.0, 6.0]
STANDARD = {
    "last_robust_accuracy": "robust_accuracy",
    "last_natural_accuracy": "natural_accuracy",
    "last_perturbation_stability": "perturbation_stability",
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """The tiny sweep trained and ingested: its store, spec and run folder."""
    from robustlab.sweep.execute import ingest_planned
    from robustlab.sweep.job import run_planned
    from robustlab.sweep.spec import expand, load_spec

    root = tmp_path_factory.mktemp("report-sweep")
    (root / "spec.toml").write_text(SPEC)
    spec = load_spec(root / "spec.toml")
    runs = expand(spec, root / "runs")
    store = ResultsStore(root / "db.sqlite")
    store.upsert_sweep(
        spec.name, {**spec.to_dict(), "out": str(root / "runs")}, [r.name for r in runs]
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in runs:
            assert run_planned(run) == "finished"
    finally:
        torch.set_num_threads(previous)
    ingest_planned(store, runs)
    return {"store": root / "db.sqlite", "spec": root / "spec.toml", "runs": root / "runs"}


def report(capsys, cwd: Path, *args: str) -> tuple[int, str, str]:
    """``robustlab report ARGS`` run in ``cwd``: exit code, stdout, stderr."""
    capsys.readouterr()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(["report", *args])
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return code, out, err


def expected_cell(records: list[RunRecord], width: int, lam: float, key: str) -> str:
    """A cell as the table must show it, recomputed from the store's rows (not its code)."""
    values = [
        r.summary["selection"]["last"][key]
        for r in records
        if r.config["model"]["width"] == width and r.config["method"]["lam"] == lam
    ]
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({len(values)})"


def test_markdown_tables_equal_the_store_aggregates(sweep, tmp_path, capsys):
    out = tmp_path / "md"
    code, printed, err = report(
        capsys, tmp_path, SWEEP, "--store", str(sweep["store"]), "--format", "md", "--out", str(out)
    )
    assert code == 0, err
    records = ResultsStore(sweep["store"], create=False).sweep_runs(SWEEP)
    assert len(records) == 8
    for metric, key in STANDARD.items():
        lines = (out / f"table_{metric}.md").read_text().splitlines()
        assert lines[0] == "| method.lam \\ model.width | 8 | 32 |"  # rows λ, columns width
        body = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:4]}
        assert sorted(body) == ["1", "6"]
        for lam in LAMS:
            cells = [c.strip() for c in body[f"{lam:g}"].strip("| ").split(" | ")[1:]]
            for width, cell in zip(WIDTHS, cells, strict=True):
                assert cell.strip("*") == expected_cell(records, width, lam, key), (metric, cell)
        # the best of each column is bold, and only it
        for j, width in enumerate(WIDTHS):
            means = {
                lam: statistics.mean(
                    r.summary["selection"]["last"][key]
                    for r in records
                    if r.config["model"]["width"] == width and r.config["method"]["lam"] == lam
                )
                for lam in LAMS
            }
            top = max(means, key=means.__getitem__)
            for lam in LAMS:
                cell = body[f"{lam:g}"].strip("| ").split(" | ")[1 + j]
                assert cell.startswith("**") == (means[lam] == means[top])
        assert f"### {metric}" not in printed and f"({metric})" in printed  # printed too
    assert str(out.resolve()) in err  # says where the files went


def test_csv_parses_into_the_expected_rows(sweep, tmp_path, capsys):
    out = tmp_path / "csv"
    code, printed, err = report(
        capsys, tmp_path, str(sweep["spec"]), "--store", str(sweep["store"]),
        "--format", "csv", "--out", str(out), "--metric", "train_loss",
    )  # fmt: skip
    assert code == 0, err
    records = ResultsStore(sweep["store"], create=False).sweep_runs(SWEEP)
    with open(out / "table_last_robust_accuracy.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["method.lam\\model.width", "8", "32"]
    assert [row[0] for row in rows[1:]] == ["1.0", "6.0"]
    for row, lam in zip(rows[1:], LAMS, strict=True):
        for cell, width in zip(row[1:], WIDTHS, strict=True):
            assert cell.rstrip("*") == expected_cell(records, width, lam, "robust_accuracy")
    assert sum(cell.endswith("*") for row in rows[1:] for cell in row[1:]) >= 2  # one a column
    # --metric adds a table; the LaTeX files are booktabs tabulars
    assert (out / "table_train_loss.csv").is_file()
    tex = (out / "table_last_robust_accuracy.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    # several tables print as CSV blocks under a `# title` line
    blocks = printed.strip().split("\n\n")
    assert len(blocks) == 4 and all(b.startswith("# ") for b in blocks)
    assert list(csv.reader(io.StringIO(blocks[0].split("\n", 1)[1])))[1:] == rows[1:]


class _Links(HTMLParser):
    """The ids, internal links and external addresses of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.addresses: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.add(value)
            if name == "href" and value.startswith("#"):
                self.links.append(value[1:])
            elif name in ("href", "src", "action", "data", "poster") and value:
                self.addresses.append(value)


def _chromium() -> str:
    """Debian's chromium: found, or installed when root with apt-get; else the test skips."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed (installing it needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: {' '.join(command)}: {done.stderr[-200:]}")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return path


def test_html_page_is_self_contained_and_opens_in_headless_chromium(sweep, tmp_path, capsys):
    out = tmp_path / "page"
    code, printed, err = report(
        capsys, tmp_path, SWEEP, "--store", str(sweep["store"]), "--out", str(out)
    )
    assert code == 0, err
    index = Path(printed.strip())
    assert index == (out / "index.html").resolve() and index.is_file()
    text = index.read_text()
    page = _Links()
    page.feed(text)
    # self-contained: every address is a data URI, every link an anchor of the page
    assert page.addresses and all(a.startswith("data:") for a in page.addresses)
    assert "<script" not in text and "@import" not in text and "url(" not in text
    assert set(page.links) <= page.ids, set(page.links) - page.ids
    records = ResultsStore(sweep["store"], create=False).sweep_runs(SWEEP)
    from robustlab.report.html import run_anchor

    for record in records:  # the overview links every run to its section
        assert run_anchor(record.run_id) in page.ids and run_anchor(record.run_id) in page.links
    assert {"configuration", "tables", "runs"} <= page.ids
    assert "What varies" in text and "model.width" in text and "method.lam" in text
    assert page.tags.count("table") >= 3 + 1 + len(records)  # tables, overview, per run
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and text.count("data:image/png;base64,") >= len(pngs)  # every figure embedded
    assert not (tmp_path / "reports").exists()  # --out given: nothing else written

    browser = _chromium()
    shot = tmp_path / "screenshot.png"
    done = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
            "--window-size=1200,2000", index.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no script error, no failed load, nothing logged
    assert shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and figures, not a blank page
    print(f"screenshot: {shot}")


def test_html_embeds_the_figures_it_is_given_by_section_and_run(sweep, tmp_path):
    """The page embeds whatever figures it gets: shared ones under their section, a run's own
    in that run's section."""
    import matplotlib.image
    import numpy as np

    from robustlab.report.build import plan_report
    from robustlab.report.html import Page, display_width, render_page
    from robustlab.report.selection import common_config, varying_keys

    class Figure:
        def __init__(self, name: str, section: str, run_id: str | None) -> None:
            self.path = tmp_path / f"{name}.png"
            matplotlib.image.imsave(self.path, np.random.default_rng(0).random((40, 60)), dpi=150)
            self.title, self.caption, self.section, self.run_id = (
                name,
                f"about {name}",
                section,
                run_id,
            )

    store = ResultsStore(sweep["store"], create=False)
    plan = plan_report(store, [SWEEP], out=tmp_path / "x")
    records = plan.selection.records
    figures = [
        Figure("curves", "training curves", None),
        Figure("spectra", "diagnostics", None),
        Figure("mine", "training curves", records[1].run_id),
    ]
    text = render_page(
        Page("t", "s", records, common_config(records), varying_keys(records), plan.tables, figures)
    )
    assert text.count("data:image/png;base64,") == 3
    assert text.index("<h3>Training curves</h3>") < text.index('alt="curves"')
    assert text.index("<h3>Diagnostics</h3>") < text.index('alt="spectra"')
    runs = text.split('<section class="run"')
    assert 'alt="mine"' not in runs[1] and 'alt="mine"' in runs[2]  # in its run's section only
    assert display_width(figures[0].path.read_bytes()) == round(60 / 150 * 96)
    assert not (tmp_path / "x").exists()  # planning writes nothing


def test_without_matplotlib_the_report_is_its_tables_and_one_notice(sweep, tmp_path):
    out = tmp_path / "tables-only"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # `import matplotlib` raises ImportError
        "from robustlab.cli.main import main\n"
        f"sys.exit(main(['report', {SWEEP!r}, '--store', {str(sweep['store'])!r}, "
        f"'--out', {str(out)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "matplotlib is not" in line]
    assert len(notices) == 1 and "tables" in notices[0], done.stderr
    assert (out / "table_last_robust_accuracy.md").is_file()
    assert (out / "table_last_robust_accuracy.csv").is_file()
    assert not list(out.glob("*.png"))
    page = (out / "index.html").read_text()
    assert "<img" not in page and "matplotlib is not installed" in page


@pytest.mark.parametrize(
    "args, words",
    [
        (["--where", "model.width=64"], "no runs match .*model.width=64"),
        (["--rows", "model.depth"], "--rows='model.depth': does not vary.*varying: model.width"),
        (["--cols", "method.lam", "--rows", "method.lam"], "--cols='method.lam'"),
        (["--metric", "robust_acc"], "--metric='robust_acc'.*known: .*last_robust_accuracy"),
        (["--out", "a_file"], "--out='a_file': is a file"),
        (
            ["--where", "model.widht=8"],
            "'model.widht' is no config key; did you mean 'model.width'",
        ),
    ],
    ids=[
        "empty-selection",
        "axis-does-not-vary",
        "same-axis-twice",
        "unknown-metric",
        "out-is-file",
        "where-key-typo",
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(sweep, tmp_path, capsys, args, words):
    (tmp_path / "a_file").write_text("keep")
    store = sweep["store"]
    before = store.stat().st_mtime_ns, store.stat().st_size
    code, out, err = report(capsys, tmp_path, SWEEP, "--store", str(store), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("robustlab report: error: ")
    assert re.search(words, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no reports/ folder
    assert (tmp_path / "a_file").read_text() == "keep"
    assert (store.stat().st_mtime_ns, store.stat().st_size) == before


def test_tables_figures_and_export_read_one_flat_config(sweep) -> None:
    import dataclasses

    from robustlab.report.selection import flat_config

    record = ResultsStore(sweep["store"], create=False).sweep_runs(SWEEP)[0]
    unset = {"model": {"name": "mlp", "width": None, "options": {"bias": True}}, "seed": 0}
    record = dataclasses.replace(record, config=unset, width=64, depth=2, lam=None)
    flat = flat_config(record)
    # The width and depth the run built, where its config left the family's default.
    assert flat["model.width"] == 64 and flat["model.depth"] == 2
    assert flat["model.options.bias"] is True and "model.options" not in flat
    assert flat_config(record, open_options=False)["model.options"] == {"bias": True}


def test_targets_spec_dirs_ids_and_where_select_the_same_runs(sweep, tmp_path, capsys):
    store = ResultsStore(sweep["store"], create=False)
    from robustlab.report.selection import select_runs

    everything = [r.run_id for r in select_runs(store, [SWEEP]).records]
    assert len(everything) == 8
    assert everything[0].endswith("w8-lam1-s0")  # the spec's order, not the names'
    assert [r.run_id for r in select_runs(store, [str(sweep["spec"])]).records] == everything
    by_dir = select_runs(store, [str(sweep["runs"] / SWEEP)]).records
    assert sorted(r.run_id for r in by_dir) == sorted(everything)
    two = select_runs(store, everything[:2]).records
    assert [r.run_id for r in two] == everything[:2]
    narrowed = select_runs(store, [], [("model.width", 32), ("method.lam", 6)]).records
    assert len(narrowed) == 2 and all(r.width == 32 for r in narrowed)
    # one axis left: a table by λ with one column per metric; none left: one row per run
    code, printed, err = report(
        capsys, tmp_path, SWEEP, "--store", str(sweep["store"]), "--where", "model.width=32",
        "--format", "md", "--out", "one",
    )  # fmt: skip
    assert code == 0, err
    assert printed.splitlines()[2].startswith("| method.lam | last_robust_accuracy (%) |")
    assert (tmp_path / "one" / "table_by_method.lam.md").is_file()
    code, printed, err = report(
        capsys, tmp_path, *everything[:2], "--store", str(sweep["store"]), "--format", "json",
        "--out", "two",
    )  # fmt: skip
    assert code == 0, err
    import json

    result = json.loads(printed)
    assert result["rows"] is None and result["cols"] is None
    assert [c["run"] for c in result["tables"][0]["cells"][::3]] == everything[:2]
    # --rows/--cols swap the default axes; the default folder is reports/<sweep>
    code, printed, err = report(
        capsys, tmp_path, SWEEP, "--store", str(sweep["store"]), "--rows", "model.width",
        "--cols", "method.lam", "--format", "md",
    )  # fmt: skip
    assert code == 0, err
    assert "| model.width \\ method.lam | 1 | 6 |" in printed
    assert (tmp_path / "reports" / SWEEP / "table_last_robust_accuracy.md").is_file()
    assert str((tmp_path / "reports" / SWEEP).resolve()) in err


def _record(run_id: str, width: int, lam: float, eps: float, seed: int) -> RunRecord:
    config = {
        "seed": seed,
        "model": {"name": "mlp", "width": width},
        "method": {"name": "trades", "lam": lam},
        "attack": {"eps": eps, "alpha": eps / 4},
        "eval": {"eps": eps},
    }
    summary = {"selection": {"last": {"robust_accuracy": 0.1 * width + lam + eps + seed}}}
    return RunRecord(
        run_id, "/x", "t", "t", "finished", "", "digits", "mlp", width, 1, "trades", lam, "Linf",
        eps, seed, 1, config, summary,
    )  # fmt: skip


def test_keys_that_move_together_are_one_axis_and_a_third_splits_the_tables():
    from robustlab.report.grids import build_tables, choose_layout
    from robustlab.report.selection import varying_keys

    records = [
        _record(f"r{w}-{lam}-{eps}-{s}", w, lam, eps, s)
        for w in (8, 16)
        for lam in (1.0, 6.0)
        for eps in (0.1, 0.2)
        for s in (0, 1)
    ]
    # attack.alpha and eval.eps follow attack.eps: one setting, named attack.eps
    assert varying_keys(records) == {
        "model.width": [8, 16],
        "method.lam": [1.0, 6.0],
        "attack.eps": [0.1, 0.2],
    }
    layout = choose_layout(records)
    assert (layout.rows, layout.cols, layout.facets) == (
        "method.lam",
        "model.width",
        ["attack.eps"],
    )
    tables = build_tables(records, layout, ["last_robust_accuracy"])
    assert [t.facet for t in tables] == [{"attack.eps": 0.1}, {"attack.eps": 0.2}]
    assert all({s.n for s in t.grid.stats.values()} == {2} for t in tables)
    first = tables[0].grid
    assert first.stats[(1, 1)].mean == pytest.approx(0.1 * 16 + 6 + 0.1 + 0.5)
    assert tables[0].slug != tables[1].slug  # one file each
