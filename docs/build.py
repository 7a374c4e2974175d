"""Regenerate the figures and tables of docs/reproducing.md at the tiny CPU scale (``make docs``).

Runs the guide's tiny-scale commands, as a user would type them, in a temporary directory (its
own ``runs/`` and store; nothing is left behind), then copies the chosen PNGs to
``docs/figures/`` and the tables to ``docs/figures/*.md``. Every run is seeded and trained on
one CPU thread, so the numbers are the same from one build to the next on a machine (floating
point may differ on another CPU).

    python docs/build.py            # all steps, about 1-2 minutes on 2 CPU cores
    python docs/build.py --keep DIR # keep the runs in DIR (to look at them, or to rerun a step)
    python docs/build.py --only wu2021,phase   # some steps (with --keep: reusing the runs)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FIGURES = DOCS / "figures"
STORE = "runs/robustlab.db"
# The model the diagnostics look at: PGD-AT on digits, long enough to have learned something
# (the tiny sweeps' two epochs leave models near chance), its iterations tracked.
DIGITS_SPEC = str(DOCS / "specs" / "digits-pgd.toml")
DIGITS_RUN = "runs/digits-pgd/s0"
# Xing et al.'s critical-eps study; its runs are named after a hash of their config, which
# changes whenever a config key is added: the commands name them with a shell glob, as a user
# would type them (`clean-0-s0-*`), and run_step expands it.
CRITICAL = "runs/critical-eps/docs"
# Wu et al.'s width x λ x seed grid at the tiny scale, with enough epochs for curves.
SPEC = str(DOCS / "specs" / "wu2021-tiny.toml")


@dataclass
class Step:
    """Commands of one section of the guide, what they produce, and where it goes in docs/."""

    name: str
    commands: list[list[str]]
    figures: dict[str, str] = field(default_factory=dict)  # produced PNG -> docs/figures name
    tables: dict[int, str] = field(default_factory=dict)  # command index -> its stdout's file


STEPS = [
    Step(
        "wu2021",
        [
            ["sweep", SPEC, "--workers", "2", "--store", STORE],
            ["sweep", "table", SPEC, "--rows", "method.lam", "--cols", "model.width",
             "--metric", "last_robust_accuracy", "--store", STORE],
            ["sweep", "table", SPEC, "--rows", "method.lam", "--cols", "model.width",
             "--metric", "last_perturbation_stability", "--store", STORE],
            ["report", "wu2021-tiny", "--out", "reports/wu2021-tiny", "--store", STORE],
        ],
        figures={
            "reports/wu2021-tiny/metrics_vs_epoch.png": "wu2021-metrics-vs-epoch.png",
            "reports/wu2021-tiny/metrics_vs_width.png": "wu2021-metrics-vs-width.png",
            "reports/wu2021-tiny/losses.png": "wu2021-losses.png",
            "reports/wu2021-tiny/lipschitz.png": "wu2021-lipschitz.png",
        },
        tables={1: "wu2021-tiny-robust.md", 2: "wu2021-tiny-stability.md"},
    ),
    Step(
        "digits",
        [
            ["sweep", DIGITS_SPEC, "--store", STORE],
            ["show", DIGITS_RUN, "--plot", "--store", STORE],
        ],
        figures={f"{DIGITS_RUN}/plots/iterations.png": "liu2020-iterations.png"},
    ),
    Step(
        "wen2020",
        [
            ["diagnose", DIGITS_RUN, "--what", "margins,spectra,gaps", "--split", "both",
             "--threads", "1", "--store", STORE],
        ],
        figures={
            f"{DIGITS_RUN}/diagnostics/last@10/margins.png": "wen2020-margins.png",
            f"{DIGITS_RUN}/diagnostics/last@10/spectra.png": "wen2020-spectra.png",
        },
    ),
    Step(
        "liu2020",
        [
            ["diagnose", DIGITS_RUN, "--what", "hessian,perturbation_similarity", "--n", "100",
             "--threads", "1", "--store", STORE],
        ],
        figures={
            f"{DIGITS_RUN}/diagnostics/last@10/hessian.png": "liu2020-hessian.png",
            f"{DIGITS_RUN}/diagnostics/last@10/perturbation_similarity.png": (
                "liu2020-perturbation-similarity.png"
            ),
        },
    ),
    Step(
        "xing2022",
        [
            ["critical-eps", "--set", "train.epochs=3", "--set", "eval.select=test_rob_loss",
             "--set", "model.width=64", "--set", "threads=1",
             "--eps", "8/255,32/255,64/255", "--out", CRITICAL, "--store", STORE],
            ["phase", "simulate", "--d", "10", "--n", "100", "--repeats", "100",
             "--out", "runs/phase/docs"],
            ["diagnose", f"{CRITICAL}/clean-0-s0-*", "--what", "connectivity",
             "--with", f"{CRITICAL}/eps-0.12549-s0-*", "--objective", "natural",
             "--eps", "32/255", "--n", "200", "--threads", "1", "--store", STORE],
        ],
        figures={
            f"{CRITICAL}/clean-0-s0-*/diagnostics/last@3/connectivity.png": (
                "xing2022-connectivity.png"
            ),
            f"{CRITICAL}/critical_eps.png": "xing2022-critical-eps.png",
            "runs/phase/docs/p_values.png": "xing2022-p-values.png",
            "runs/phase/docs/relative_difference.png": "xing2022-relative-difference.png",
        },
        tables={0: "xing2022-critical-eps.txt"},
    ),
]  # fmt: skip


def without_wall_time(text: str, column: str = "train s") -> str:
    """``text`` without the wall-time column of its fixed-width tables (the last one, headed
    ``column``): the one number that changes from build to build, so that a rebuild leaves
    docs/ unchanged."""
    lines, cut = [], None
    for line in text.splitlines():
        if line.rstrip().endswith(column):
            cut = line.rindex(column)
        elif cut is not None and line[cut - 2 : cut] != "  ":
            cut = None  # not a row (no column gap before the cut): the table has ended
        lines.append(line[:cut].rstrip() if cut is not None else line)
    return "\n".join(lines) + "\n"


def expand(path: str, work: Path) -> str:
    """``path`` with a shell glob (``*``) resolved under ``work``, as the shell would: it must
    name exactly one file or directory."""
    if "*" not in path:
        return path
    matches = sorted(work.glob(path))
    if len(matches) != 1:
        raise SystemExit(f"docs/build.py: {path!r} matches {len(matches)} paths; expected one")
    return str(matches[0].relative_to(work))


def run_step(step: Step, work: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for i, command in enumerate(step.commands):
        command = [expand(arg, work) for arg in command]
        shown = "robustlab " + " ".join(command)
        print(f"[{step.name}] {shown}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "robustlab", *command],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"docs/build.py: `{shown}` failed with exit code {done.returncode}")
        print(f"[{step.name}]   {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if i in step.tables:  # paths under the temporary directory, shown relative to it
            table = without_wall_time(done.stdout.replace(f"{work}/", ""))
            (FIGURES / step.tables[i]).write_text(table)
    for produced, name in step.figures.items():
        shutil.copyfile(work / expand(produced, work), FIGURES / name)


def embed_tables(guide: Path = DOCS / "reproducing.md") -> None:
    """Copy each table into the guide between ``<!-- begin figures/NAME -->`` and
    ``<!-- end figures/NAME -->`` (a ``.txt`` table as a text block), so the numbers the guide
    shows are the ones this build produced."""
    text = guide.read_text()
    for table in sorted(FIGURES.glob("*.md")) + sorted(FIGURES.glob("*.txt")):
        begin, end = f"<!-- begin figures/{table.name} -->", f"<!-- end figures/{table.name} -->"
        if begin not in text:
            continue
        body = table.read_text().strip()
        if table.suffix == ".txt":
            body = f"```text\n{body}\n```"
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    guide.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", metavar="DIR", help="run in DIR and keep it (default: a temp dir)"
    )
    parser.add_argument("--only", metavar="NAMES", help="steps, joined by commas")
    args = parser.parse_args(argv)
    names = [s.name for s in STEPS]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: unknown step; steps: {', '.join(names)}")
    FIGURES.mkdir(exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="robustlab-docs-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for step in STEPS:
            if step.name in chosen:
                run_step(step, work)
    embed_tables()
    print(f"docs/build.py: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
