"""Parsing of numbers written as fractions (``8/255``), the way papers state budgets."""

from __future__ import annotations

import re

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_number(text: str) -> float:
    """``"8/255"`` -> 0.0313..., ``"0.5"`` -> 0.5; :class:`ValueError` for anything else."""
    match = _FRACTION.match(text)
    if match:
        denominator = float(match.group(2))
        if denominator == 0:
            raise ValueError(f"division by zero in {text!r}")
        return float(match.group(1)) / denominator
    return float(text.strip())
