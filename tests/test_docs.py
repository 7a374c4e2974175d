"""The README and shipped configs stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustlab.cli.config import keys_table
from robustlab.config import build_config
from robustlab.data import list_datasets
from robustlab.models import list_models
from robustlab.training import list_methods

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_key_table_is_the_generated_one() -> None:
    block = re.search(r"<!-- keys:begin.*?-->\n(.*?)<!-- keys:end -->", README, re.S)
    assert block is not None
    assert block.group(1).strip() == keys_table().strip(), (
        "regenerate with `robustlab config --keys`"
    )


def test_readme_starts_with_the_two_commands() -> None:
    first_code = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_code and "make test" in first_code


def test_readme_names_every_registered_dataset_model_and_method() -> None:
    for name in [*list_datasets(), *list_models(), *list_methods()]:
        assert f"`{name}`" in README, name


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = build_config(path)
    assert config.train.epochs > 0


def test_default_config_equals_the_digits_config_file() -> None:
    assert build_config(ROOT / "configs" / "digits_pgd_at.toml") == build_config(None)
