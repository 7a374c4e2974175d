"""Figures of the stored diagnostics (``robustlab diagnose``: the ``diagnostics`` table) and of
the critical-ε studies (``robustlab critical-eps``).

Per run, the figure each measurement drew when it was measured (its row's ``plot``: margins'
histograms, Hessian spectra, landscapes, connectivity curves, ...) is taken as it is: it was
drawn by the measurement's own ``plot_*`` function from the per-point values, which the store
does not keep. Across runs, :data:`COMPARISONS` draws one figure per measurement from the
stored summaries, one colour per width as in every figure of the report: histograms overlaid
(margins, Lipschitz), curves overlaid (landscape, connectivity, loss variation, perturbation
similarity) or a scalar per setting (the Hessian's top eigenvalue, the spectral complexity,
the generalization gaps, the conditional robust accuracy).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...diagnostics import DIAGNOSTICS
from ...diagnostics._plot import new_figure, save
from ...store.sqlite import RunRecord
from ._base import (
    FigureFile,
    Selection,
    Series,
    band,
    draw_band,
    legend_below,
    register_figure,
)

# The split a comparison shows when a run measured several (test: what a paper reports).
PREFERRED_SPLITS = ("test", None, "train+test", "train")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]+", "_", text).strip("_") or "run"


def _run_label(record: RunRecord) -> str:
    return record.sweep_run or record.run_id


def _first_sentence(text: str | None) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat.split(". ")[0].rstrip(".") + "."


def _place(source: Path, record: RunRecord, weights: str, out_dir: Path) -> Path:
    """Where the report shows a stored figure: the file itself when the report is written
    inside the run's own directory (``show --plot``), else a copy under
    ``out_dir/diagnostics/<run>/<weights>/`` (a report directory stands on its own)."""
    run_dir = Path(record.run_dir).resolve()
    if out_dir.resolve().is_relative_to(run_dir) and source.resolve().is_relative_to(run_dir):
        return source.resolve()
    target = out_dir / "diagnostics" / _safe(_run_label(record)) / _safe(weights)
    target.mkdir(parents=True, exist_ok=True)
    path = target / source.name
    if source.resolve() != path.resolve():
        shutil.copyfile(source, path)
    return path


@register_figure("stored_diagnostics", section="diagnostics")
def stored_diagnostics(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """Each run's diagnostic figures as ``robustlab diagnose`` drew them, copied under
    ``out_dir/diagnostics/<run>/`` (a figure whose file is gone is skipped)."""
    files: list[FigureFile] = []
    for record in selection.records:
        seen: set[str] = set()
        for row in selection.diagnostics(record):
            plot = row.get("plot")
            if not plot or plot in seen or not Path(plot).is_file():
                continue
            seen.add(plot)
            path = _place(Path(plot), record, row["source"], out_dir)
            name = row["name"]
            meta = DIAGNOSTICS.meta(name) if name in DIAGNOSTICS else {}
            caption = _first_sentence(getattr(meta.get("plot"), "__doc__", None))
            split = (
                f" on {row['split']}" if row.get("split") and not meta.get("plot_splits") else ""
            )
            title = f"{name} of {_run_label(record)} ({row['source']}{split})"
            files.append(FigureFile(path, title, caption, "diagnostics", record.run_id))
    return files


# -- comparisons across runs, from the stored summaries --------------------------------------


@dataclass(frozen=True)
class Comparison:
    """How the summaries of one measurement compare across runs.

    ``points(summary)`` gives the ``(x, y)`` pairs a run contributes: a histogram's bin centres
    and densities, a curve's points, or one ``(0, value)`` for a scalar (drawn as a bar per
    setting, mean ± std over seeds).
    """

    kind: str  # "hist", "curve" or "scalar"
    points: Callable[[dict[str, Any]], list[tuple[float, float]]]
    xlabel: str
    ylabel: str
    title: str
    caption: str
    mean: Callable[[dict[str, Any]], Any] | None = None  # hist: a dashed line at each run's mean


def _histogram(key: str) -> Callable[[dict[str, Any]], list[tuple[float, float]]]:
    def points(summary: dict[str, Any]) -> list[tuple[float, float]]:
        hist = summary.get(key) or {}
        counts, edges = hist.get("counts") or [], hist.get("edges") or []
        total = sum(counts)
        if not total or len(edges) != len(counts) + 1:
            return []
        out = []
        for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
            out += [(low, count / total / (high - low)), (high, count / total / (high - low))]
        return out

    return points


def _pairs(xkey: str, ykey: Callable[[dict[str, Any]], list[Any] | None], scale: float = 1.0):
    def points(summary: dict[str, Any]) -> list[tuple[float, float]]:
        xs, ys = summary.get(xkey), ykey(summary)
        if not xs or not ys or len(xs) != len(ys):
            return []
        return [(float(x), scale * float(y)) for x, y in zip(xs, ys, strict=True) if y is not None]

    return points


def _scalar(key: Callable[[dict[str, Any]], Any], scale: float = 1.0):
    def points(summary: dict[str, Any]) -> list[tuple[float, float]]:
        value = key(summary)
        if value is None or not math.isfinite(float(value)):
            return []
        return [(0.0, scale * float(value))]

    return points


def _loss_variation(summary: dict[str, Any]) -> list[tuple[float, float]]:
    points = _pairs("eps", lambda s: s.get("mean"))(summary)
    scale = 255.0 if summary.get("norm") == "Linf" else 1.0
    return [(scale * x, y) for x, y in points]


def _connectivity_loss(summary: dict[str, Any]) -> list[Any] | None:
    """The training loss along the curve on the objective the curve was trained on."""
    split = "train_rob_loss" if summary.get("objective") == "adversarial" else "train_nat_loss"
    return (summary.get("curve") or {}).get(split)


def _landscape_1d(summary: dict[str, Any]) -> list[Any] | None:
    loss = summary.get("loss")
    return loss if summary.get("dims") == 1 and isinstance(loss, list) else None


COMPARISONS: dict[str, Comparison] = {
    "margins": Comparison(
        "hist",
        _histogram("normalized_margin_histogram"),
        "logit margin / its input-gradient dual norm (≈ distance to the boundary)",
        "density (fraction of points per unit)",
        "Normalized margins",
        "Histograms of the gradient-normalized logit margins of each run, dashed: their means "
        "(Wen et al. 2020, §4.2.1, Fig. 4: adversarial training concentrates them near the "
        "boundary).",
        mean=lambda s: (s.get("normalized_margin") or {}).get("mean"),
    ),
    "lipschitz": Comparison(
        "hist",
        _histogram("histogram"),
        "local Lipschitz estimate per point",
        "density (fraction of points per unit)",
        "Per-point local Lipschitz estimates",
        "Histograms of the per-point local Lipschitz estimate, dashed: their means (Wu et al. "
        "2021, §4.2).",
        mean=lambda s: s.get("mean"),
    ),
    "landscape": Comparison(
        "curve",
        _pairs("coords", _landscape_1d),
        "step a along the direction (θ + a·d, d filter-normalized)",
        "loss (mean CE over the points)",
        "Loss along one direction",
        "The 1-D loss landscape of each run around its weights (Li et al. 2018; Liu et al. "
        "2020, Fig. 12: a larger ε gives a sharper minimum).",
    ),
    "connectivity": Comparison(
        "curve",
        _pairs("t", _connectivity_loss),
        "position t on the Bezier curve (0: the run, 1: the model given with --with)",
        "training loss along the curve (CE)",
        "Mode connectivity",
        "Training loss along the trained Bezier curve from each run (t = 0) to the model it "
        "was compared with (t = 1), on the objective the curve was trained on, natural or "
        "adversarial: a low curve means the two solutions are connected (Garipov et al. 2018; "
        "Liu et al. 2020, Fig. 15; Xing et al. 2022, Fig. 4). The errors along it are in each "
        "run's own connectivity figure.",
    ),
    "loss_variation": Comparison(
        "curve",
        _loss_variation,
        "radius ε of the ball (L∞: in units of 1/255, as the paper writes it)",
        "mean max loss increase in the ball",
        "Loss variation in the ε-ball",
        "Mean over points of max_{‖δ‖≤ε} L(x+δ) − L(x) (Wen et al. 2020, App. B.5, Table 1).",
    ),
    "perturbation_similarity": Comparison(
        "curve",
        _pairs("a", lambda s: (s.get("similarity") or [None])[0]),
        "step a along the top Hessian eigenvector (θ ± a·v)",
        "cosine similarity of δ(θ + a·v) and δ(θ − a·v)",
        "Perturbation similarity",
        "How much the adversarial perturbations change when the weights move along the top "
        "eigenvector (Liu et al. 2020, §4.2, Fig. 3).",
    ),
    "hessian": Comparison(
        "scalar",
        _scalar(lambda s: max(s.get("eigenvalues") or [math.nan], key=abs)),
        "",
        "largest Hessian eigenvalue (magnitude)",
        "Top Hessian eigenvalue",
        "Sharpness of the training loss at the run's weights: the eigenvalue of largest "
        "magnitude of its Hessian (Liu et al. 2020, §4.2, Fig. 2).",
    ),
    "spectra": Comparison(
        "scalar",
        _scalar(lambda s: s.get("spectral_complexity")),
        "",
        "spectral complexity (product of the layers' spectral norms)",
        "Spectral complexity",
        "The product of every layer's largest singular value (Wen et al. 2020, App. B.4.2).",
    ),
    "gaps": Comparison(
        "scalar",
        _scalar(lambda s: s.get("rob_loss_gap")),
        "",
        "adversarial loss gap, test − train (CE)",
        "Robust generalization gap",
        "Test minus train adversarial cross-entropy (Wen et al. 2020, Tables 3–6).",
    ),
    "stability": Comparison(
        "scalar",
        _scalar(lambda s: s.get("conditional_robust_accuracy"), 100.0),
        "",
        "robust accuracy among the correct points (%)",
        "Conditional robust accuracy",
        "Robust among the originally correct points (Wen et al. 2020, App. D.2).",
    ),
}


def latest_summary(selection: Selection, record: RunRecord, name: str) -> dict[str, Any] | None:
    """The run's last stored summary of ``name``, on its test split when it measured several."""
    rows = [r for r in selection.diagnostics(record) if r["name"] == name]
    for split in PREFERRED_SPLITS:
        chosen = [r for r in rows if r.get("split") == split]
        if chosen:
            return chosen[-1]["summary"]
    return rows[-1]["summary"] if rows else None


def _compare(selection: Selection, name: str, spec: Comparison, out_dir: Path) -> list[FigureFile]:
    summaries = {r.run_id: latest_summary(selection, r, name) for r in selection.records}
    points = {rid: spec.points(s) if s else [] for rid, s in summaries.items()}
    measured = [r for r in selection.records if points[r.run_id]]
    if len(measured) < 2:  # one run: its own stored figure says more
        return []
    drawn = new_figure(size=(6.5, 4.6))
    if drawn is None:
        return []
    figure, (axis,) = drawn
    series_list = selection.series(measured)
    if spec.kind == "scalar":
        legend = _bars(axis, series_list, points)
    else:
        for series in series_list:
            if spec.kind == "hist":
                _histograms(axis, series, points, summaries, spec)
            else:
                draw_band(axis, band(points[r.run_id] for r in series.records), series)
        axis.set_xlabel(spec.xlabel)
        legend = legend_below(figure, [axis])
    axis.set_ylabel(spec.ylabel)
    axis.grid(alpha=0.3, axis="y" if spec.kind == "scalar" else "both")
    pooled = "one line per run" if spec.kind == "hist" else selection.seeds_text(series_list)
    title = f"{spec.title} across runs ({pooled})"
    figure.suptitle(title, fontsize=10)
    path = save(figure, out_dir / f"diagnostic_{name}.png")
    return [FigureFile(path, title, spec.caption, "diagnostics", selection.run_id(), legend)]


def _bars(
    axis: Any, series_list: list[Series], points: dict[str, list[tuple[float, float]]]
) -> dict[str, str]:
    """One bar per setting (mean over its seeds, ± std as an error bar), named on the x axis."""
    from matplotlib.colors import to_hex

    for index, series in enumerate(series_list):
        data = band([points[r.run_id] for r in series.records])
        axis.bar(
            index,
            data.mean[0],
            yerr=data.std[0] if data.n[0] > 1 else None,
            color=series.colour,
            alpha=0.85,
            capsize=4,
            # The style key (λ beside width) as a hatch: bars have no line style.
            hatch=None if series.linestyle == "-" else "//",
            edgecolor="white",
        )
    axis.set_xticks(
        range(len(series_list)),
        [s.label.replace(", ", "\n") for s in series_list],
        fontsize=8,
    )
    axis.set_xlabel("setting (bar: mean over seeds; error bar: ± std)")
    return {s.label: to_hex(s.colour) for s in series_list}


def _histograms(
    axis: Any,
    series: Series,
    points: dict[str, list[tuple[float, float]]],
    summaries: dict[str, dict[str, Any] | None],
    spec: Comparison,
) -> None:
    """Each run's histogram as a step line (runs have their own bins, so seeds are not
    pooled), and its mean as a dashed vertical line."""
    for i, record in enumerate(series.records):
        xs, ys = zip(*points[record.run_id], strict=True)
        axis.plot(
            xs,
            ys,
            color=series.colour,
            linestyle=series.linestyle,
            linewidth=1.1,
            alpha=0.8,
            label=series.label if i == 0 else "_seed",
        )
        mean = spec.mean(summaries[record.run_id] or {}) if spec.mean else None
        if isinstance(mean, (int, float)) and math.isfinite(mean):
            axis.axvline(mean, color=series.colour, linestyle="--", linewidth=1.0, alpha=0.9)


@register_figure("diagnostic_comparisons", section="diagnostics")
def diagnostic_comparisons(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """One figure per stored measurement that two or more runs have (:data:`COMPARISONS`)."""
    files: list[FigureFile] = []
    for name, spec in COMPARISONS.items():
        files += _compare(selection, name, spec, out_dir)
    return files
