"""The README and shipped configs stay true to the code."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from robustlab.cli.config import keys_table
from robustlab.cli.main import main
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


# ---------------------------------------------------------------- the README's examples run


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_error_examples_are_what_the_program_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], one_thread
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = README.splitlines()
    examples = [
        (line[2:], expected)
        for line, expected in itertools.pairwise(lines)
        if line.startswith("$ robustlab ") and ": error: " in expected  # the error examples
    ]
    assert len(examples) >= 2
    # Some examples are checked against a run (the parameter count, a second architecture):
    # train them as tiny as the messages allow (the MLP's width is what the messages name).
    tiny = [
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "data.train_size=64",
        "--set",
        "eval.n=32",
    ]
    tiny += ["--set", "eval.n_train=0"]
    needed = {"runs/digits-pgd": [], "runs/digits-narrow": ["--set", "model.width=16"]}
    for run, extra in needed.items():
        if any(run in command for command, _ in examples):
            assert main(["train", *tiny, *extra, "--out", run]) == 0
    for command, expected in examples:
        capsys.readouterr()
        code = main(shlex.split(command)[1:])
        err = capsys.readouterr().err
        assert code == 2
        assert err.strip() == expected, command


def _library_snippet() -> str:
    section = README.split("### As a library", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_library_snippet_trains_then_evaluates(one_thread, capsys) -> None:
    namespace: dict = {}
    exec(compile(_library_snippet(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    # The comment on the method call names exactly the keys the method returns.
    comment = re.search(r"out = method\(.*# \{(.*)\}", _library_snippet())
    assert comment is not None
    assert set(re.findall(r'"(\w+)"', comment.group(1))) == set(namespace["out"])
    # The model was trained before being evaluated (an untrained one is at chance, 10%).
    result = namespace["result"]
    assert result.natural_accuracy > 0.6 and 0 < result.robust_accuracy < result.natural_accuracy
    # Printing the result shows the summary the comment shows, not the per-example tensors.
    assert printed[0] == repr(result) and len(printed[0]) < 400
    shown = re.search(r"print\(result\)  # (RobustnessResult\(n=\d+, attack='\w+'), ", README)
    assert shown is not None and printed[0].startswith(shown.group(1))


def test_readme_war_recipe_trains_a_thin_model_that_learns(
    tmp_path: Path, one_thread, capsys
) -> None:
    """The thin model of the WAR recipe must learn, or its ζ means nothing (1 unit: 19%)."""
    block = next(b for b in _code_blocks("bash") if "calibrate-war" in b)
    thin = shlex.split(block.splitlines()[0])
    assert thin[:2] == ["robustlab", "train"] and "--out" in thin
    argv = thin[1 : thin.index("--out")]
    fast = ["train.epochs=6", "eval.final=false", "eval.n_train=0", "eval.lipschitz_n=0"]
    fast += ["eval.steps=5", "data.val_size=0", "device=cpu"]
    argv += [arg for o in fast for arg in ("--set", o)]
    argv += ["--out", str(tmp_path / "thin"), "--store", str(tmp_path / "s.db"), "--json"]
    assert main(argv) == 0
    final = json.loads(capsys.readouterr().out)["final"]
    assert final["test_nat_acc"] > 0.6


def test_gitignore_ignores_the_data_root_only() -> None:
    """``data/`` (the default data.root) is ignored; the package's ``data/`` is not."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a checkout")

    def ignored(path: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        return check.returncode == 0

    assert ignored("data/cifar-10-batches-py/data_batch_1")
    assert not ignored("src/robustlab/data/new_format.py")
