"""Figures of the phase transition: Xing et al.'s Figs. 2-3 from a simulation, and the two
curves whose crossing is ε* from a critical-ε grid.

Drawn with matplotlib's object-oriented API, off-screen (see :mod:`robustlab.diagnostics._plot`);
without matplotlib a figure is skipped with a one-line notice and ``None`` is returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..diagnostics._plot import new_figure, save

if TYPE_CHECKING:
    from ._base import SimulationResult
    from .critical import CriticalEpsResult

# Fig. 2 left draws a handful of budgets; twenty lines would be a tangle.
TRAJECTORY_LINES = 6


def _setting(result: SimulationResult) -> str:
    return f"{result.model}, d={result.d}, n={result.n}, {result.repeats} repeats"


def plot_relative_difference(result: SimulationResult, path: str | Path) -> Path | None:
    """Fig. 2 left: ||θ(t)(ε) − θ(t)(0)|| / ||θ(t)(0)|| against the step t, for a few ε."""
    made = new_figure()
    if made is None:
        return None
    figure, (axis,) = made
    count = len(result.eps)
    picks = sorted({round(i) for i in np.linspace(0, count - 1, min(TRAJECTORY_LINES, count))})
    # From step 2: the first step from θ = 0 is the same for every ε (the attack has no
    # direction at 0), a relative difference of exactly 0 that a log axis cannot show.
    steps = np.arange(1, result.relative_difference.shape[0] + 1)[1:]
    for colour, index in enumerate(picks):
        ratio = math.log(result.eps[index] / result.eps_star)
        axis.plot(
            steps,
            result.relative_difference[1:, index],
            color=f"C{colour}",
            label=f"ε={result.eps[index]:.3g} (log ε/ε* = {ratio:+.1f})",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    # Room under the lowest curve for the legend (log scale: a factor, not an offset).
    shown = result.relative_difference[1:, picks]
    low = float(shown[shown > 0].min()) if (shown > 0).any() else 1e-3
    axis.set_ylim(bottom=low / 30)
    axis.set_xlabel("gradient-descent step t (from t = 2)")
    axis.set_ylabel("||θ(t)(ε) − θ(t)(0)|| / ||θ(t)(0)||  (mean over repeats)")
    axis.set_title(f"Adversarial vs clean training trajectory ({_setting(result)})", fontsize=9)
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    return save(figure, path)


def plot_p_values(result: SimulationResult, path: str | Path) -> Path | None:
    """Figs. 2 right and 3: the p-values of the parameters and of the training loss against
    log(ε/ε*); clean-like training keeps them near 0.5 (uniform), departure sends them to 0."""
    made = new_figure()
    if made is None:
        return None
    figure, (axis,) = made
    ratio = result.log_ratio
    axis.plot(ratio, result.p_value_params, "o-", color="C0", label="parameters θ(T)(ε) (Fig. 2)")
    axis.plot(
        ratio, result.p_value_loss, "s-", color="C1", label="training loss R̂(θ(T)(ε), ε) (Fig. 3)"
    )
    axis.axvline(0.0, color="tab:gray", linestyle="--", linewidth=1, label="ε = ε* = sqrt(d/n)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("log(ε / ε*)  (natural log; ε: L2 budget)")
    axis.set_ylabel("p-value against clean training (mean over repeats)")
    axis.set_title(f"Does adversarial training still look clean? ({_setting(result)})", fontsize=9)
    axis.legend(fontsize=8)
    return save(figure, path)


def plot_critical_eps(
    result: CriticalEpsResult, path: str | Path, unit: float = 1.0
) -> Path | None:
    """The adversarial training loss at each ε of the grid against the clean model's clean test
    loss (a horizontal line); ε* is where they cross (Xing et al. section 5.2, Table 1)."""
    made = new_figure()
    if made is None:
        return None
    figure, (axis,) = made
    rows = [result.clean, *result.rows]  # ε = 0: the clean model's own training loss
    eps = [row.eps / unit for row in rows]
    axis.plot(
        eps,
        [row.train_loss for row in rows],
        "o-",
        color="C0",
        label="adversarial training loss R̂(θ̂(ε), ε)",
    )
    test_losses = [row.test_loss for row in rows]
    if all(v is not None for v in test_losses):
        axis.plot(eps, test_losses, "s--", color="C1", alpha=0.7, label="adversarial test loss")
    axis.axhline(
        result.clean_test_loss,
        color="C2",
        linestyle=":",
        label=f"clean model's clean test loss R(θ̂(0), 0) = {result.clean_test_loss:.4g}",
    )
    if result.critical_eps is not None:
        axis.axvline(
            result.critical_eps / unit,
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label=f"ε* = {_eps_text(result.critical_eps, unit)}",
        )
    unit_text = "" if unit == 1.0 else f", in units of 1/{round(1 / unit)}"
    axis.set_xlabel(f"training budget ε ({result.norm}{unit_text})")
    axis.set_ylabel("cross-entropy loss at the selected epoch")
    axis.set_title(
        f"Critical ε* of {result.method} on {result.dataset} ({result.model})", fontsize=9
    )
    axis.legend(fontsize=7)
    return save(figure, path)


def _eps_text(eps: float, unit: float) -> str:
    return f"{eps:.4g}" if unit == 1.0 else f"{eps / unit:.3g}/{round(1 / unit)}"


def draw_simulation(result: SimulationResult, out: Path) -> dict[str, Any]:
    """Both simulation figures under ``out``; ``{name: path}`` of those drawn."""
    drawn = {
        "relative_difference": plot_relative_difference(result, out / "relative_difference.png"),
        "p_values": plot_p_values(result, out / "p_values.png"),
    }
    return {name: str(path) for name, path in drawn.items() if path is not None}
