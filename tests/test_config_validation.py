"""``robustlab config`` validates exactly as ``train`` does (issue 8, point 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sets
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused command, without its ``robustlab CMD:`` prefix."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1, err
    return err.split(": error: ", 1)[1]


# Settings each key accepts alone that train refuses once data and model are known.
REFUSED_BY_TRAIN = {
    "fixed depth": (["model.name=lenet", "model.depth=3"], "model.depth=3"),
    "unsupported depth": (["model.name=wrn", "model.depth=30", "model.width=1"], "model.depth=30"),
    "model option typo": (
        ["model.name=resnet_cifar", "model.options.batchnrm=false"],
        "model.options.batchnrm",
    ),
    "method option typo": (
        ["method.name=trades", "method.options.detach_clen=true"],
        "method.options.detach_clen",
    ),
    "validation split too large": (["data.val_size=5000"], "data.val_size=5000"),
    "L2 budget beyond the diameter": (["attack.norm=L2", "attack.eps=8.5"], "attack.eps=8.5"),
    "L2 eval budget beyond the diameter": (["eval.norm=L2", "eval.eps=9"], "eval.eps=9"),
}


@pytest.mark.parametrize(
    ("overrides", "fragment"), REFUSED_BY_TRAIN.values(), ids=list(REFUSED_BY_TRAIN)
)
def test_config_refuses_what_train_refuses(
    overrides: list[str], fragment: str, tmp_path: Path, monkeypatch, capsys, one_thread
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [*sets([*overrides, "device=cpu"])]
    from_config = _error(["config", *argv], capsys)
    from_train = _error(["train", *argv, "--quiet"], capsys)
    assert from_config == from_train
    assert fragment in from_config
    assert list(tmp_path.iterdir()) == []  # neither wrote anything


def test_config_accepts_and_writes_nothing(tmp_path: Path, monkeypatch, capsys, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    # An L2 budget equal to the digits' diameter sqrt(1*8*8) = 8 is the largest allowed.
    argv = ["config", *sets(["attack.norm=L2", "attack.eps=8", "model.name=lenet"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert build_config(None, ["attack.norm=L2"]).attack.norm in out
    assert "eps = 8.0" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["[10,", "[10,,20]", "10]", "[[10, 8/255]", "[10, 20", ",10"])
def test_malformed_list_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError, match="malformed list") as info:
        build_config(None, ["train.epochs=30", f"train.milestones={text}"])
    assert info.value.key == "train.milestones"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[10, 8/255]", [10.0, 8 / 255]), ("10,20", [10.0, 20.0]), ("[10, 20/2,]", [10.0, 10.0])],
)
def test_lists_with_fractions_still_parse(text: str, expected: list[float]) -> None:
    assert build_config(None, [f"train.milestones={text}"]).train.milestones == expected


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("atack.eps=0.1", "atack.eps", "'attack.eps'"),
        ("data.optins.n_train=5", "data.optins.n_train", "'data.options.n_train'"),
    ],
)
def test_unknown_table_names_the_key(override: str, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    assert info.value.key == key
    assert suggestion in str(info.value)
    assert "{" not in str(info.value)  # not a Python dict


def test_unknown_table_in_a_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[atack]\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"did you mean 'attack\.steps'") as info:
        build_config(path)
    assert info.value.key == "atack.steps"
