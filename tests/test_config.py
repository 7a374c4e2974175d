"""Typed run configuration: defaults <- base <- TOML file <- ``--set``, and every way to get it wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from robustlab.config import (
    RunConfig,
    all_keys,
    build_config,
    describe_keys,
    iter_keys,
    to_toml,
)
from robustlab.data import list_datasets
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.models import list_models
from robustlab.training import list_methods
from robustlab.training.schedules import list_schedules

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Defaults and derived keys


def test_defaults_resolve() -> None:
    declared = RunConfig()  # the declared defaults, before resolution
    assert declared.attack.alpha is None
    assert declared.eval.eps is None and declared.eval.norm is None
    assert declared.eval.alpha is None
    assert declared.train.milestones is None
    assert declared.method.lam is None
    config = build_config()
    eps, steps, epochs = declared.attack.eps, declared.attack.steps, declared.train.epochs
    assert config.attack.eps == eps > 0
    assert config.attack.alpha == pytest.approx(2.5 * eps / steps)
    # eval follows attack unless set
    assert config.eval.eps == eps
    assert config.eval.norm == config.attack.norm == declared.attack.norm
    assert config.eval.alpha == pytest.approx(2.5 * eps / declared.eval.steps)
    assert config.train.milestones == [0.5 * epochs, 0.75 * epochs]
    assert config.train.milestones[0] > 0


@pytest.mark.parametrize(("method", "lam"), [("pgd_at", 1.0), ("clean", 0.0)])
def test_lam_resolves_to_the_method_default(method: str, lam: float) -> None:
    assert build_config(overrides=[f"method.name={method}"]).method.lam == lam


def test_derived_keys_follow_their_sources() -> None:
    config = build_config(
        overrides=[
            "attack.eps=0.2",
            "attack.steps=5",
            "attack.norm=L2",
            "eval.steps=8",
            "train.epochs=100",
            "method.name=clean",
        ]
    )
    assert config.attack.alpha == pytest.approx(2.5 * 0.2 / 5)
    assert config.eval.eps == 0.2
    assert config.eval.norm == "L2"
    assert config.eval.alpha == pytest.approx(2.5 * 0.2 / 8)
    assert config.train.milestones == [50.0, 75.0]
    assert config.method.lam == 0.0


def test_explicit_values_are_not_overwritten_by_resolution() -> None:
    config = build_config(
        overrides=[
            "attack.eps=0.2",
            "attack.alpha=0.01",
            "eval.eps=0.05",
            "eval.norm=L2",
            "eval.alpha=0.02",
            "train.milestones=[3]",
            "method.lam=0.5",
        ]
    )
    assert config.attack.alpha == 0.01
    assert (config.eval.eps, config.eval.norm, config.eval.alpha) == (0.05, "L2", 0.02)
    assert config.train.milestones == [3.0]
    assert config.method.lam == 0.5


def test_resolution_is_idempotent() -> None:
    config = build_config(overrides=["attack.eps=8/255", "train.epochs=7"])
    again = build_config(base=config.to_dict())
    assert again == config


# ---------------------------------------------------------------------------------------------
# Precedence: defaults <- base <- file <- --set


def test_precedence_defaults_file_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[attack]\neps = 0.2\nsteps = 4\n\n[train]\nepochs = 10\n\n[model]\nname = "lenet"\n',
    )
    config = build_config(path, ["attack.eps=0.3", "train.epochs=12"])
    assert config.attack.eps == 0.3  # --set beats the file
    assert config.train.epochs == 12
    assert config.attack.steps == 4  # the file beats the default
    assert config.model.name == "lenet"
    assert config.train.batch_size == RunConfig().train.batch_size  # neither file nor --set
    assert config.attack.alpha == pytest.approx(2.5 * 0.3 / 4)  # derived from the final values


def test_base_sits_between_defaults_and_file(tmp_path: Path) -> None:
    base = {"attack": {"eps": 0.2, "steps": 3}, "train": {"epochs": 8, "lr": 0.05}}
    path = write(tmp_path, "[attack]\nsteps = 6\n")
    config = build_config(path, ["train.lr=0.01"], base=base)
    assert config.attack.eps == 0.2  # base
    assert config.attack.steps == 6  # file over base
    assert config.train.lr == 0.01  # --set over base
    assert config.train.epochs == 8  # base over default
    assert base == {"attack": {"eps": 0.2, "steps": 3}, "train": {"epochs": 8, "lr": 0.05}}


def test_later_set_wins() -> None:
    config = build_config(overrides=["attack.steps=3", "attack.steps=7"])
    assert config.attack.steps == 7


# ---------------------------------------------------------------------------------------------
# Values: fractions, lists, option tables, strings


def test_fractions_in_toml_strings(tmp_path: Path) -> None:
    path = write(tmp_path, '[attack]\neps = "8/255"\nalpha = "2/255"\n\n[eval]\neps = "4/255"\n')
    config = build_config(path)
    assert config.attack.eps == 8 / 255
    assert config.attack.alpha == 2 / 255
    assert config.eval.eps == 4 / 255
    assert config.eval.alpha == pytest.approx(2.5 * (4 / 255) / config.eval.steps)


def test_fractions_in_set() -> None:
    config = build_config(overrides=["attack.eps=8/255", "eval.alpha= 1 / 255 "])
    assert config.attack.eps == 8 / 255
    assert config.attack.alpha == pytest.approx(2 / 255)  # 2.5 * (8/255) / 10
    assert config.eval.eps == 8 / 255
    assert config.eval.alpha == 1 / 255


def test_count_or_fraction_keeps_its_kind() -> None:
    assert build_config(overrides=["data.val_size=100"]).data.val_size == 100
    assert isinstance(build_config(overrides=["data.val_size=100"]).data.val_size, int)
    assert build_config(overrides=["data.val_size=0.25"]).data.val_size == 0.25
    assert build_config(overrides=["data.val_size=1/4"]).data.val_size == 0.25


@pytest.mark.parametrize("text", ["[75,90]", "[75, 90]", "75,90"])
def test_lists_via_set(text: str) -> None:
    config = build_config(overrides=["train.epochs=100", f"train.milestones={text}"])
    assert config.train.milestones == [75.0, 90.0]


def test_list_items_accept_fractions() -> None:
    config = build_config(overrides=["train.epochs=20", "train.milestones=[10, 30/2]"])
    assert config.train.milestones == [10.0, 15.0]


def test_option_tables_via_set() -> None:
    config = build_config(
        overrides=[
            "model.options.batchnorm=false",
            "data.options.n_train=100",
            "data.options.noise=0.5",
        ]
    )
    assert config.model.options == {"batchnorm": False}  # a TOML literal, not the text "false"
    assert config.data.options == {"n_train": 100, "noise": 0.5}


def test_option_tables_in_toml_merge_with_set(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[data]\nname = "synthetic"\n\n[data.options]\nn_train = 64\nnoise = 0.1\n'
    )
    config = build_config(path, ["data.options.noise=0.3", "data.options.image_size=8"])
    assert config.data.name == "synthetic"
    assert config.data.options == {"n_train": 64, "noise": 0.3, "image_size": 8}


def test_option_table_as_inline_toml() -> None:
    config = build_config(overrides=["model.options={batchnorm = false}"])
    assert config.model.options == {"batchnorm": False}


def test_options_are_flat_a_nested_table_is_rejected() -> None:
    # A nested table could not be written back to config.toml, so it is refused up front.
    with pytest.raises(ConfigError, match=r"model.options.a=\{'b': 1\}: expected a number, string"):
        build_config(overrides=["model.options.a.b=1"])
    with pytest.raises(ConfigError, match="data.options.t="):
        build_config(overrides=["data.options.t.u=[1]"])


def test_string_keys_take_the_text_verbatim() -> None:
    assert build_config(overrides=["tag=123"]).tag == "123"
    assert build_config(overrides=["tag=true"]).tag == "true"
    assert build_config(overrides=["data.root=~/data/x"]).data.root == "~/data/x"
    assert build_config(overrides=['tag="two words"']).tag == "two words"
    assert build_config(overrides=['data.name="synthetic"']).data.name == "synthetic"


def test_l2_budget_may_exceed_one() -> None:
    config = build_config(overrides=["attack.norm=L2", "attack.eps=1.5"])
    assert config.attack.eps == 1.5
    assert config.eval.eps == 1.5
    assert build_config(overrides=["eval.norm=L2", "eval.eps=3"]).eval.eps == 3.0


def test_boundary_values_are_accepted() -> None:
    assert build_config(overrides=["attack.eps=0"]).attack.eps == 0.0
    assert build_config(overrides=["attack.eps=1"]).attack.eps == 1.0
    assert build_config(overrides=["method.lam=0"]).method.lam == 0.0
    assert build_config(overrides=["data.val_size=0"]).data.val_size == 0
    config = build_config(overrides=["train.epochs=4", "train.milestones=[0, 4]"])
    assert config.train.milestones == [0.0, 4.0]


# ---------------------------------------------------------------------------------------------
# to_toml round trip

ROUND_TRIP = {
    "defaults": [],
    "fractions_and_options": [
        "attack.eps=8/255",
        "attack.alpha=2/255",
        "eval.eps=1/255",
        "model.name=resnet_cifar",
        "model.width=16",
        "model.depth=20",
        "model.options.batchnorm=false",
        "data.name=synthetic",
        "data.options.n_train=64",
        "data.options.noise=0.25",
    ],
    "clean_l2": [
        "method.name=clean",
        "attack.norm=L2",
        "attack.eps=1.5",
        "eval.steps=7",
        "eval.n=100",
        "train.schedule=cosine",
    ],
    "lists_and_counts": [
        "train.epochs=100",
        "train.milestones=[33.5, 66, 90]",
        "data.val_size=500",
        "train.nesterov=true",
        "train.weight_decay=0",
    ],
    "awkward_strings": [
        'tag="quote \\" backslash \\\\ newline \\n tab \\t unicode ε"',
        "data.root=C:\\data\\cifar",
    ],
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_to_toml_round_trip(tmp_path: Path, name: str) -> None:
    config = build_config(overrides=ROUND_TRIP[name])
    text = to_toml(config)
    tomllib.loads(text)  # valid TOML
    assert build_config(write(tmp_path, text)) == config
    assert to_toml(build_config(write(tmp_path, text, "again.toml"))) == text


def test_round_trip_configs_differ_from_defaults() -> None:
    # the round-trip cases exercise what they claim to
    config = build_config(overrides=ROUND_TRIP["awkward_strings"])
    assert "\n" in config.tag and '"' in config.tag and "\\" in config.tag
    assert config.data.root == "C:\\data\\cifar"
    assert build_config(overrides=ROUND_TRIP["fractions_and_options"]).attack.eps == 8 / 255


@pytest.mark.parametrize("tag", ["two\nlines", "bell\x07 nul\x00 del\x7f", 'tab\tand \\ and "'])
def test_to_toml_escapes_control_characters(tmp_path: Path, tag: str) -> None:
    config = build_config(base={"tag": tag})
    text = to_toml(config)
    assert tomllib.loads(text)["tag"] == tag
    assert build_config(write(tmp_path, text)).tag == tag


def test_to_toml_omits_unset_values() -> None:
    config = build_config()
    config.model.width, config.eval.n = None, None
    text = to_toml(config)
    assert "width" not in text  # model.width unset: TOML has no null
    assert "\nn = " not in text  # eval.n unset


# ---------------------------------------------------------------------------------------------
# Bad input: every kind raises ConfigError naming the key and the value

BAD_SET = [
    # (override, key, value as shown, what the message must also say)
    ("bogus=1", "bogus", "1", "valid keys here"),
    ("attack.epss=0.1", "attack.epss", "0.1", "did you mean 'attack.eps'"),
    ("train.lrr=0.1", "train.lrr", "0.1", "did you mean 'train.lr'"),
    ("eps=0.1", "eps", "0.1", "'attack.eps'"),
    ("model.wdith=3", "model.wdith", "3", "did you mean 'model.width'"),
    ("train.epochs=ten", "train.epochs", "ten", "expected an integer"),
    ("train.epochs=2.5", "train.epochs", "2.5", "expected an integer"),
    ("seed=1.0", "seed", "1.0", "expected an integer"),
    ("attack.random_start=maybe", "attack.random_start", "maybe", "true or false"),
    ("attack.random_start=1", "attack.random_start", "1", "true or false"),
    ("attack.eps=abc", "attack.eps", "abc", "expected a number"),
    ("attack.eps=1/0", "attack.eps", "1/0", "expected a number"),
    ("attack.eps=nan", "attack.eps", "nan", "finite"),
    ("attack.eps=true", "attack.eps", "true", "expected a number"),
    ("attack.eps=-0.1", "attack.eps", "-0.1", ">= 0"),
    ("attack.eps=-8/255", "attack.eps", "-0.031", ">= 0"),
    ("attack.eps=1.5", "attack.eps", "1.5", "Linf"),
    ("eval.eps=2", "eval.eps", "2", "Linf"),
    ("model.width=0", "model.width", "0", "> 0"),
    ("model.width=-1", "model.width", "-1", "> 0"),
    ("model.depth=0", "model.depth", "0", "> 0"),
    ("method.lam=-1", "method.lam", "-1", ">= 0"),
    ("attack.steps=0", "attack.steps", "0", "> 0"),
    ("eval.steps=0", "eval.steps", "0", "> 0"),
    ("attack.alpha=0", "attack.alpha", "0", "> 0"),
    ("train.batch_size=0", "train.batch_size", "0", "> 0"),
    ("train.epochs=0", "train.epochs", "0", "> 0"),
    ("train.lr=-0.1", "train.lr", "-0.1", "> 0"),
    ("train.momentum=1", "train.momentum", "1", "[0, 1)"),
    ("train.milestones=[10,4000]", "train.milestones", "4000", "train.epochs="),
    ("train.milestones=[-1]", "train.milestones", "-1", "train.epochs="),
    ("train.milestones=[10,x]", "train.milestones[1]", "x", "expected a number"),
    ("data.val_size=1.0", "data.val_size", "1.0", "[0, 1)"),
    ("data.val_size=1.5", "data.val_size", "1.5", "[0, 1)"),
    ("data.val_size=-3", "data.val_size", "-3", "[0, 1)"),
    ("model=3", "model", "3", "table of keys"),
    ("attack=x", "attack", "x", "attack.eps"),
    ("model.options=3", "model.options", "3", "table of options"),
    ("attack.eps.x=1", "attack.eps", "{'x': 1}", "expected a number"),
]


@pytest.mark.parametrize(("override", "key", "value", "allowed"), BAD_SET)
def test_bad_set_values(override: str, key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(overrides=[override])
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"{key}=")
    assert value in message
    assert allowed in message
    assert "\n" not in message
    assert "_Raw" not in message


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("model.name=resnet9000", list_models()),
        ("method.name=trades9000", list_methods()),
        ("data.name=imagenet9000", list_datasets()),
        ("attack.norm=L3", ["Linf", "L2"]),
        ("eval.norm=Linfinity", ["Linf", "L2"]),
        ("train.schedule=step", list_schedules()),
        ("device=gpu", ["auto", "cpu", "cuda"]),
        ("attack.bn_mode=frozen", ["auto", "eval", "train"]),
    ],
)
def test_unknown_names_list_the_valid_ones(override: str, valid: list[str]) -> None:
    key, value = override.split("=")
    with pytest.raises(UnknownNameError) as info:
        build_config(overrides=[override])
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"{key}={value!r}")
    assert len(valid) >= 2
    assert sorted(info.value.valid) == sorted(valid)
    for name in valid:
        assert name in message


def test_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'pgd_at'"):
        build_config(overrides=["method.name=pgd-at"])


def test_misplaced_key_names_every_table_that_has_it() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(overrides=["batch_size=64"])
    assert "'train.batch_size'" in str(info.value)
    assert "'eval.batch_size'" in str(info.value)


@pytest.mark.parametrize("text", ["noequals", "=3", "  =3"])
def test_bad_set_syntax(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(overrides=[text])
    assert info.value.key == "--set"
    assert text in str(info.value)
    assert "KEY=VALUE" in str(info.value)


def test_set_through_a_leaf_is_rejected() -> None:
    # attack.eps holds a number, so attack.eps.x cannot descend into it once a file has set it
    with pytest.raises(ConfigError) as info:
        build_config(overrides=["attack.eps=0.1", "attack.eps.x=1"])
    assert info.value.key == "attack.eps.x"
    assert "'eps' is not a table" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert info.value.key == "config"
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[attack]\neps = 8/255\n")  # a fraction must be a string in TOML
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert info.value.key == "config"
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


BAD_FILE = [
    # (TOML text, key, value as shown, what the message must also say)
    ("bogus = 1\n", "bogus", "1", "valid keys here"),
    ("[attack]\nepss = 0.1\n", "attack.epss", "0.1", "did you mean 'attack.eps'"),
    ("[train]\nepochs = 2.5\n", "train.epochs", "2.5", "expected an integer"),
    ('[train]\nepochs = "ten"\n', "train.epochs", "ten", "expected an integer"),
    ('[attack]\nrandom_start = "yes"\n', "attack.random_start", "yes", "true or false"),
    ("[attack]\neps = -0.1\n", "attack.eps", "-0.1", ">= 0"),
    ('[attack]\neps = "300/255"\n', "attack.eps", "1.17", "Linf"),
    ("[model]\nwidth = 0\n", "model.width", "0", "> 0"),
    ('[model]\nname = "resnet9000"\n', "model.name", "resnet9000", "valid: "),
    ("[data]\nname = 3\n", "data.name", "3", "expected a string"),
    ("model = 3\n", "model", "3", "table of keys"),
    ("[train]\nmilestones = 10\n", "train.milestones", "10", "expected a list"),
    ("[data]\noptions = 1\n", "data.options", "1", "table of options"),
]


@pytest.mark.parametrize(("text", "key", "value", "allowed"), BAD_FILE)
def test_bad_file_values(tmp_path: Path, text: str, key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(write(tmp_path, text))
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"{key}=")
    assert value in message
    assert allowed in message


# ---------------------------------------------------------------------------------------------
# The key table

ISSUE_KEYS = {
    "seed",
    "device",
    "data.name",
    "data.root",
    "data.val_size",
    "model.name",
    "model.width",
    "model.depth",
    "method.name",
    "method.lam",
    "attack.norm",
    "attack.eps",
    "attack.alpha",
    "attack.steps",
    "attack.bn_mode",
    "eval.eps",
    "eval.steps",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.schedule",
    "train.milestones",
}


def _leaves(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Leaf keys found independently of iter_keys, by walking a default instance."""
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_leaves(type(value), f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


def test_describe_keys_covers_every_leaf_key() -> None:
    rows = describe_keys()
    keys = [key for key, _, _ in rows]
    assert keys == _leaves()
    assert keys == all_keys() == [dotted for dotted, _, _ in iter_keys()]
    assert len(set(keys)) == len(keys)
    assert set(keys) >= ISSUE_KEYS
    for key, default, doc in rows:
        assert doc.strip(), key
        assert default.strip(), key


@pytest.mark.parametrize(
    ("key", "default"),
    [(key, default) for key, default, _ in describe_keys() if default != "unset"],
)
def test_described_default_is_a_valid_set_value(key: str, default: str) -> None:
    # the README's key table can be pasted into --set and means the default
    config = build_config(overrides=[f"{key}={default}"])
    assert config == build_config()


def test_merge_tables_merges_nested_tables_and_changes_neither_argument():
    """Config file over ``base`` (``build_config``) and a sweep's axes over its base: nested
    tables merge key by key, any other value replaces, the inputs stay as they were."""
    from types import MappingProxyType

    from robustlab.config import merge_tables

    base = {"model": {"name": "wrn", "width": 10}, "seed": 0}
    update = {"model": MappingProxyType({"width": 2}), "seed": {"table": "now"}, "device": "cpu"}
    merged = merge_tables(base, update)
    assert merged == {
        "model": {"name": "wrn", "width": 2},
        "seed": {"table": "now"},
        "device": "cpu",
    }
    assert base == {"model": {"name": "wrn", "width": 10}, "seed": 0}
    # A read-only mapping as the base table merges too (a sweep's base may be any mapping).
    assert merge_tables(MappingProxyType({"a": MappingProxyType({"b": 1})}), {"a": {"c": 2}}) == {
        "a": {"b": 1, "c": 2}
    }
