"""Sweep specs: parsing, validation before anything runs, expansion and run names; presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robustlab.cli.main import main
from robustlab.config import all_keys
from robustlab.errors import ConfigError
from robustlab.sweep.presets import PRESETS, SCALES, preset_spec
from robustlab.sweep.spec import expand, grid, load_spec, parse_spec

BASE = {"data.name": "synthetic", "model.name": "mlp", "train.epochs": 1}


def spec(**tree):
    return parse_spec({"name": "t", "base": BASE, **tree})


def test_expansion_is_the_product_with_zips_and_seeds_in_a_fixed_order():
    s = spec(
        axes={"model.width": [8, 16]},
        zip=[{"method.name": ["trades", "gat"], "method.lam": [6, 1.5]}],
        seeds=[0, 1],
    )
    points = grid(s)
    assert len(points) == 2 * 2 * 2
    # axes first, then the zip group, seeds fastest
    assert points[0] == {"model.width": 8, "method.name": "trades", "method.lam": 6, "seed": 0}
    assert points[1]["seed"] == 1 and points[2]["method.name"] == "gat"
    assert points[4]["model.width"] == 16
    assert grid(s) == points  # deterministic


def test_run_names_are_readable_stable_and_the_dirs_follow(tmp_path):
    s = spec(
        axes={"model.width": [10], "method.lam": [12.0, 1.5], "attack.eps": ["8/255"]},
        zip=[{"method.name": ["trades"]}],
        seeds=[0, 2],
    )
    runs = expand(s, tmp_path)
    # single-valued axes are overrides, not name parts; budgets in 1/255; method name first
    assert [r.name for r in runs] == ["lam12-s0", "lam12-s2", "lam1.5-s0", "lam1.5-s2"]
    s2 = spec(
        axes={"model.width": [10, 5], "method.lam": [12]}, zip=[{"method.name": ["trades", "gat"]}]
    )
    names = [r.name for r in expand(s2, tmp_path)]
    assert names[0] == "trades-w10-s0" and "gat-w5-s0" in names
    assert runs[0].run_dir == str(tmp_path.resolve() / "t" / "lam12-s0")
    assert runs[0].full_name == "t/lam12-s0"
    assert runs[0].values == {
        "model.width": 10,
        "method.lam": 12.0,
        "attack.eps": 8 / 255,
        "method.name": "trades",
        "seed": 0,
    }
    assert runs[0].cell == {k: v for k, v in runs[0].values.items() if k != "seed"}
    eps = expand(spec(axes={"attack.eps": ["4/255", "8/255"]}), tmp_path)
    assert [r.name for r in eps] == ["eps4-s0", "eps8-s0"]


def test_dotted_and_nested_tables_are_the_same_spec(tmp_path):
    dotted = parse_spec(
        {
            "name": "t",
            "base": {"train.epochs": 2, "data.name": "synthetic"},
            "axes": {"model.width": [4, 8]},
        }
    )
    nested = parse_spec(
        {
            "name": "t",
            "base": {"train": {"epochs": 2}, "data": {"name": "synthetic"}},
            "axes": {"model": {"width": [4, 8]}},
        }
    )
    assert [r.config for r in expand(dotted, tmp_path)] == [
        r.config for r in expand(nested, tmp_path)
    ]


def test_base_file_is_relative_to_the_spec_and_axes_override_it(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.toml").write_text(
        '[model]\nname = "mlp"\nwidth = 7\n[train]\nepochs = 3\n'
    )
    (tmp_path / "spec.toml").write_text(
        'name = "b"\nbase = "conf/base.toml"\nseeds = [1]\n[axes]\n"train.epochs" = [5]\n'
    )
    s = load_spec(tmp_path / "spec.toml")
    (run,) = expand(s, tmp_path / "out")
    assert run.config["model"]["width"] == 7 and run.config["train"]["epochs"] == 5
    assert run.config["seed"] == 1 and run.name == "s1"
    # a file and changes over it: [base] file = ...
    (tmp_path / "spec2.toml").write_text(
        'name = "b2"\n[base]\nfile = "conf/base.toml"\n"model.width" = 9\n[axes]\n"train.lr" = [0.1, 0.2]\n'
    )
    runs = expand(load_spec(tmp_path / "spec2.toml"), tmp_path / "out")
    assert [r.config["model"]["width"] for r in runs] == [9, 9]
    assert [r.config["train"]["epochs"] for r in runs] == [3, 3]
    assert [r.name for r in runs] == ["lr0.1-s0", "lr0.2-s0"]


@pytest.mark.parametrize(
    "tree, key, words",
    [
        ({"name": "t", "axis": {}}, "axis", "did you mean 'axes'"),
        ({"name": "t", "seed": [0]}, "seed", "did you mean 'seeds'"),
        ({"name": "a/b"}, "name", "letters"),
        (
            {"name": "t", "zip": [{"method.lam": [1, 2], "model.width": [1]}]},
            "zip[0]",
            "equal length",
        ),
        ({"name": "t", "axes": {"model.width": 3}}, "axes.model.width", "non-empty list"),
        ({"name": "t", "axes": {"seed": [1]}, "seeds": [0]}, "axes.seed", "seeds"),
        (
            {"name": "t", "axes": {"method.lam": [1]}, "zip": {"method.lam": [2]}},
            "zip[0].method.lam",
            "already varied",
        ),
        ({"name": "t", "seeds": [0, 0]}, "seeds", "twice"),
        ({"name": "t", "base": "nope.toml"}, "base", "no such config file"),
        (
            {"name": "t", "axes": {"model.width": [1]}, "name_keys": ["model.widht"]},
            "name_keys",
            "did you mean",
        ),
    ],
)
def test_spec_mistakes_are_one_line_errors(tree, key, words, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_spec(tree, relative_to=tmp_path)
    assert info.value.key == key
    assert words in str(info.value) and "\n" not in str(info.value)


def test_every_run_is_validated_before_anything_runs(tmp_path):
    s = spec(axes={"model.width": [8, -1]})
    with pytest.raises(ConfigError) as info:
        expand(s, tmp_path)
    assert info.value.key == "model.width" and "model.width=-1" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        expand(spec(axes={"train.epoch": [1, 2]}), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_two_runs_with_one_name_are_refused(tmp_path):
    s = spec(axes={"model.width": [8, 16]}, name_keys=[])  # names from the seed only
    with pytest.raises(ConfigError, match="two runs get this name"):
        expand(s, tmp_path)


def _missing_keys(name: str, scale: str) -> set[str]:
    """Config keys a preset uses that this robustlab does not have yet (other issues add them)."""
    s = preset_spec(name, scale)
    used = {*s.base, *s.axes, *(k for g in s.zips for k in g)}
    known = set(all_keys())
    return {k for k in used if k not in known and k.split(".")[-2:-1] != ["options"]}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_expands(name, scale, tmp_path):
    missing = _missing_keys(name, scale)
    if missing:
        pytest.skip(f"{name}@{scale} uses keys not in robustlab yet: {sorted(missing)}")
    s = preset_spec(name, scale)
    runs = expand(s, tmp_path)
    assert len({r.name for r in runs}) == len(runs) > 1
    assert s.name == (name if scale == "paper" else f"{name}-{scale}")
    if scale == "tiny":  # small enough for CPUs: few epochs, small data
        assert all(r.config["train"]["epochs"] <= 2 for r in runs)
        assert all(r.config["data"]["name"] in ("digits", "synthetic") for r in runs)


def test_published_grids_of_the_presets():
    wu = preset_spec("wu2021-table1")
    assert wu.axes["model.width"] == [1, 5, 10] and wu.seeds == [0, 1, 2]
    lam = dict(zip(wu.zips[0]["method.lam"], wu.zips[0]["method.name"], strict=True))
    assert [k for k, m in lam.items() if m == "trades"] == [6, 9, 12, 15, 18, 21]
    assert [k for k, m in lam.items() if m == "gat"] == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert wu.base["train.schedule"] == "exp_decay" and wu.base["train.milestones"] == [75]
    liu = preset_spec("liu2020-table1").zips[0]
    assert len(liu["tag"]) == 15  # MNIST 3 schedulers; VGG and ResNet18 x 3 x {no resets, PAS}
    assert {
        o
        for o, t in zip(liu["train.optimizer"], liu["tag"], strict=True)
        if t.startswith(("lenet", "vgg"))
    } == {"adam"}
    wen = preset_spec("wen2020")
    assert wen.axes["model.depth"] == [56, 110] and wen.axes["model.options.batchnorm"] == [
        False,
        True,
    ]
    assert wen.axes["attack.eps"] == ["4/255", "8/255", "16/255"]


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.toml").write_text(
        'name = "dry"\nseeds = [0, 1]\n[base]\n"data.name" = "synthetic"\n[axes]\n"model.width" = [4, 8]\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "s.toml", "--dry-run", "--json", "--out", "o"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed["runs"]] == ["w4-s0", "w4-s1", "w8-s0", "w8-s1"]
    assert listed["counts"]["pending"] == 4
    assert main(["sweep", "s.toml", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "w8-s1  pending" in table and "4 runs (2 cells x 2 seeds)" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_cli_refuses_a_bad_spec_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\naxes = {}\nseedz = [1]\n')
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "did you mean 'seeds'" in err
    assert main(["sweep", "--preset", "wu2021-tabel1", "--dry-run"]) == 2
    assert "did you mean 'wu2021-table1'" in capsys.readouterr().err
    assert main(["sweep", str(bad), "--rows", "x"]) == 2
    assert "only `robustlab sweep table`" in capsys.readouterr().err


def test_spec_round_trips_to_the_sweep_record():
    s = preset_spec("wu2021-war", "tiny")
    record = s.to_dict()
    assert record["name"] == "wu2021-war-tiny" and record["source"] == "preset:wu2021-war@tiny"
    assert (
        parse_spec(
            {k: v for k, v in record.items() if k in ("name", "base", "zip", "seeds", "name_keys")}
        ).zips
        == s.zips
    )
    assert dataclasses.replace(s, source="").name == s.name


def test_presets_are_listed(capsys):
    assert main(["sweep", "--list-presets", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["presets"]) == {
        "wu2021-table1",
        "wu2021-war",
        "liu2020-table1",
        "xing2022-table3",
        "wen2020",
    }


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_shipped_sweep_specs_expand(path, tmp_path):
    runs = expand(load_spec(path), tmp_path)
    assert len(runs) > 1


def test_an_edited_spec_warns_about_runs_started_with_other_values(tmp_path):
    """A run directory keeps the config it was started with: when the spec changed since, the
    sweep says so rather than silently mixing old and new settings."""
    from robustlab.config import build_config
    from robustlab.rundir import RunDirectory
    from robustlab.sweep.execute import config_drift
    from robustlab.sweep.state import sweep_states

    first = expand(spec(axes={"model.width": [4, 8]}), tmp_path)
    for run in first:  # as a job creates them
        RunDirectory.create(run.path, build_config(base=run.config), run.full_name)
    assert config_drift(sweep_states(first)) == []
    edited = expand(spec(axes={"model.width": [4, 8]}, base={**BASE, "train.epochs": 2}), tmp_path)
    warnings = config_drift(sweep_states(edited))
    assert len(warnings) == 2 and "train.epochs" in warnings[0] and "keeps them" in warnings[0]
