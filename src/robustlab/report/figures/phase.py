"""The critical-ε figures of ``robustlab critical-eps`` studies among the selected runs (Xing,
Song & Cheng 2022, §5.2, Table 1): the adversarial training loss against ε and the clean
model's test loss, crossing at ε*. The study drew it with
:func:`robustlab.phase.plots.plot_critical_eps` beside its runs (``critical_eps.png``, with
``critical_eps.json``); it is taken from there once per study.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._base import FigureFile, Selection, register_figure

# A study's runs live in <root>/<kind>/<run> or <root>/<run>: look this far up for its files.
LEVELS = 3


def study_roots(selection: Selection) -> list[Path]:
    """The critical-ε study directories (holding ``critical_eps.json``) above the runs."""
    roots: list[Path] = []
    for record in selection.records:
        for parent in list(Path(record.run_dir).parents)[:LEVELS]:
            if (parent / "critical_eps.json").is_file() and parent not in roots:
                roots.append(parent)
                break
    return roots


@register_figure("critical_eps", section="phase")
def critical_eps(selection: Selection, out_dir: Path) -> list[FigureFile]:
    files = []
    for index, root in enumerate(study_roots(selection)):
        figure = root / "critical_eps.png"
        if not figure.is_file():
            continue
        try:
            answer = json.loads((root / "critical_eps.json").read_text())
        except (OSError, json.JSONDecodeError):
            answer = {}
        target = out_dir / f"critical_eps-{index + 1}.png"
        shutil.copyfile(figure, target)
        star = answer.get("critical_eps")
        title = f"Critical ε* of study {answer.get('group', root.name)}" + (
            f": ε* = {star:.4g}" if isinstance(star, (int, float)) else ": no crossing in the grid"
        )
        caption = (
            "Adversarial training loss at each ε of the grid against the clean model's clean "
            "test loss; ε* is where they cross (Xing et al. 2022, §5.2, Table 1)."
        )
        files.append(FigureFile(target, title, caption, "phase", None))
    return files
