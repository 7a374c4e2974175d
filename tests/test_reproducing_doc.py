"""docs/reproducing.md stays true to the code: every image it shows exists (and is a PNG made
by `make docs`), and every `robustlab` command of its code blocks parses: the subcommand, its
options and their values exist (presets, config keys, spec files)."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from robustlab.cli.main import build_parser
from robustlab.config import all_keys, parse_override
from robustlab.sweep.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "reproducing.md"
TEXT = GUIDE.read_text()


def _commands() -> list[str]:
    """Every ``robustlab ...`` line of the guide's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()  # a trailing comment
            if line.startswith("robustlab "):
                commands.append(line)
    return commands


COMMANDS = _commands()


def test_every_image_exists_and_every_figure_is_referenced() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT)
    assert len(images) >= 8
    for image in images:
        path = GUIDE.parent / image
        assert path.is_file(), image
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    linked = {Path(p).name for p in re.findall(r"\]\((figures/[^)]+)\)", TEXT)}
    shipped = {p.name for p in (GUIDE.parent / "figures").iterdir()}
    assert shipped <= linked | {n for n in shipped if not n.endswith(".png")}, (
        "a figure in docs/figures/ that the guide does not show"
    )
    assert sum(p.stat().st_size for p in (GUIDE.parent / "figures").iterdir()) < 3_000_000


def test_the_guide_has_commands_for_each_paper() -> None:
    assert len(COMMANDS) >= 30
    for word in ("wu2021-table1", "liu2020-table1", "critical-eps", "phase simulate", "wen2020"):
        assert any(word in c for c in COMMANDS), word


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's verdict on an unknown option or subcommand
        pytest.fail(f"`{command}` does not parse (exit {exc.code})")
    for flag, value in itertools.pairwise(argv):
        if flag == "--preset":
            assert value in PRESETS, value
        if flag == "--set":
            key, _ = parse_override(value)
            assert key in all_keys(), key
    for word in getattr(args, "words", []) or []:  # a sweep spec file named in the guide
        if word.endswith(".toml"):
            assert (ROOT / word).is_file(), word
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), args.config


def test_the_tables_shown_are_the_ones_make_docs_wrote() -> None:
    """docs/build.py copies each table between its markers; a hand edit would drift."""
    shown = re.findall(r"<!-- begin (figures/\S+) -->\n(.*?)\n<!-- end \1 -->", TEXT, re.S)
    assert len(shown) >= 3
    for name, body in shown:
        table = (GUIDE.parent / name).read_text().strip()
        if name.endswith(".txt"):
            table = f"```text\n{table}\n```"
        assert body == table, name
