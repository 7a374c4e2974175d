"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_value(value: Any, kind: str = "auto") -> str:
    """Render one cell: fractions as percentages (``kind="pct"``), durations with two decimals
    (``kind="seconds"``), floats compactly, None as '-'."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if kind == "seconds":
        return f"{float(value):.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], kinds: Sequence[str] | None = None
) -> str:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    kinds = list(kinds) if kinds is not None else ["auto"] * len(headers)
    cells = [[format_value(v, k) for v, k in zip(row, kinds, strict=True)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        all(_looks_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    stripped = text.rstrip("%")
    if stripped == "-":
        return True
    try:
        float(stripped)
    except ValueError:
        return False
    return True
