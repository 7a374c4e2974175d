"""Printing a result shows its numbers; ``eval``'s AutoAttack version flag does not read as the
program's version (issue 8, point 19)."""

from __future__ import annotations

import argparse

import pytest
import torch

from robustlab.cli import eval as eval_cli
from robustlab.evaluation import RobustnessResult


def _result(n: int, keep_adv: bool) -> RobustnessResult:
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(n, generator=generator) < 0.9
    stable = torch.rand(n, generator=generator) < 0.5
    return RobustnessResult(
        correct,
        stable,
        correct & stable,
        torch.full((n,), 0.03),
        seconds=1.25,
        attack="apgd-ce,square",
        per_attack={"apgd-ce": 0.5, "square": 0.45},
        x_adv=torch.rand(n, 3, 32, 32, generator=generator) if keep_adv else None,
        flags=[{"code": "zero_gradients", "message": "..."}],
    )


@pytest.mark.parametrize("keep_adv", [False, True])
def test_repr_is_a_summary_not_the_tensors(keep_adv: bool) -> None:
    result = _result(10_000, keep_adv)
    text = repr(result)
    assert str(result) == text and "\n" not in text
    assert len(text) < 400  # the dataclass default printed ~30 million characters with x_adv
    assert "tensor(" not in text
    assert text.startswith("RobustnessResult(n=10000, attack='apgd-ce,square', ")
    for part in (
        f"natural_accuracy={result.natural_accuracy:.4f}",
        f"robust_accuracy={result.robust_accuracy:.4f}",
        f"perturbation_stability={result.perturbation_stability:.4f}",
        "per_attack={'apgd-ce': 0.5000, 'square': 0.4500}",
        "max_perturbation_norm=0.03",
        "flags=['zero_gradients']",
    ):
        assert part in text
    assert ("x_adv=<tensor of shape (10000, 3, 32, 32)>" in text) == keep_adv


def test_autoattack_version_flag_is_aa_version() -> None:
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    assert parser.parse_args(["run", "--aa-version", "plus"]).version == "plus"
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert "--version" not in flags and "--aa-version" in flags
    assert "--version" not in parser.format_help()
