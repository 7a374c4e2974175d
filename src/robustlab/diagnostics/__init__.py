"""Diagnostics: measurements that explain a model's robustness, one per file, in a registry.

Each measurement is a function ``f(model, x, y, **options) -> result`` (images in [0, 1]; the
model evaluated in eval mode, its mode restored after) returning a plain dataclass with the
per-point values and a JSON-ready ``summary()``. Most follow Wen, Li & Jia 2020, "Towards
Understanding the Regularization of Adversarial Robustness on Neural Networks" (ICML):

* ``stability``: robust / correct-but-unstable / stable-but-wrong / neither, and the
  conditional robust accuracy (App. D.2);
* ``gaps``: train vs test loss and error, natural and adversarial (Tables 3–6);
* ``margins``: logit margins, raw and gradient-normalized, and confidences (Figs. 4, 10, 11);
* ``spectra``: singular values of every layer, exact for convolutions (Sedghi et al. 2019), and
  the spectral complexity (App. B.4.2);
* ``loss_variation``: max_{||δ|| ≤ ε} L(x + δ) − L(x) over ε (App. B.5, Table 1);
* ``lipschitz``: the per-point local Lipschitz estimate (Wu et al. 2021, §4.2).

In parameter space, after Liu, Salzmann, Lin, Tomioka & Süsstrunk 2020, "On the Loss Landscape
of Adversarial Training" (NeurIPS):

* ``hessian``: top eigenpairs of the training loss's Hessian, trace, spectral density (§4.2);
* ``landscape``: the loss surface along random or eigen-directions (Li et al. 2018; Fig. 12);
* ``perturbation_similarity``: adversarial examples at θ ± a·v (§4.2, Figs. 3, 10);
* ``connectivity``: a Bezier curve between two models (Garipov et al. 2018; App. C.2.5).

>>> from robustlab import diagnostics
>>> diagnostics.margins(model, x, y).summary()["margin"]["mean"]
>>> diagnostics.measure("gaps", model, x_train, y_train, x_test=x_te, y_test=y_te, attack=attack)
>>> diagnostics.plot_margins({"train": margins_train, "test": margins_test}, "margins.png")
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Importing each measurement's file registers it. The package attribute named after a file is
# then the measurement function (``diagnostics.margins(...)``); its types come from the file.
from ._base import DATA_KINDS, DIAGNOSTICS, DiagnosticResult
from .connectivity import BezierCurve, ConnectivityResult, connectivity, plot_connectivity
from .gaps import GapsResult, SplitLosses, gaps, loss_pass, plot_gaps
from .hessian import SOLVERS, HessianResult, hessian, plot_hessian
from .landscape import DIRECTIONS, LandscapeResult, landscape, plot_landscape
from .lipschitz import LipschitzResult, lipschitz, plot_lipschitz
from .loss_variation import LossVariationResult, loss_variation, plot_loss_variation
from .margins import MarginsResult, logit_margin, margins, plot_margins
from .perturbation_similarity import (
    PerturbationSimilarityResult,
    perturbation_similarity,
    plot_perturbation_similarity,
)
from .spectra import (
    LayerSpectrum,
    SpectraResult,
    clip_conv_singular_values,
    clip_linear_singular_values,
    conv_operator_norm,
    conv_singular_values,
    layer_input_sizes,
    plot_spectra,
    spectra,
)
from .stability import StabilityResult, plot_stability, stability

__all__ = [
    "DATA_KINDS",
    "DIAGNOSTICS",
    "DIRECTIONS",
    "SOLVERS",
    "BezierCurve",
    "ConnectivityResult",
    "DiagnosticResult",
    "GapsResult",
    "HessianResult",
    "LandscapeResult",
    "LayerSpectrum",
    "LipschitzResult",
    "LossVariationResult",
    "MarginsResult",
    "PerturbationSimilarityResult",
    "SpectraResult",
    "SplitLosses",
    "StabilityResult",
    "clip_conv_singular_values",
    "clip_linear_singular_values",
    "connectivity",
    "conv_operator_norm",
    "conv_singular_values",
    "create_diagnostic",
    "gaps",
    "hessian",
    "landscape",
    "layer_input_sizes",
    "lipschitz",
    "list_diagnostics",
    "logit_margin",
    "loss_pass",
    "loss_variation",
    "margins",
    "measure",
    "perturbation_similarity",
    "plot",
    "plot_connectivity",
    "plot_gaps",
    "plot_hessian",
    "plot_landscape",
    "plot_lipschitz",
    "plot_loss_variation",
    "plot_margins",
    "plot_perturbation_similarity",
    "plot_spectra",
    "plot_stability",
    "spectra",
    "stability",
]


def list_diagnostics(pattern: str | None = None) -> list[str]:
    """Names of the registered measurements."""
    return DIAGNOSTICS.names(pattern)


def create_diagnostic(name: str, **options: Any) -> Callable[..., DiagnosticResult]:
    """The measurement ``name`` with its ``options`` bound, to call as ``f(model, x, y)``.

    Options are checked now, as attacks' are: a misspelt or mistyped one fails before any work.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ConfigError: an option the measurement does not take, or of the wrong type.
    """
    from .._options import check_options

    function = DIAGNOSTICS.get(name)
    # The leading (model, x, y) are data, passed at call time, not options.
    data_args = [p.name for p in inspect.signature(function).parameters.values()][:3]
    check_options(name, function, options, key_prefix=f"diagnostic[{name}]", fixed=data_args)
    return functools.partial(function, **options)


def plot(name: str, results: Any, path: str | Path) -> Path | None:
    """Draw the figure of measurement ``name`` from its result(s) to ``path`` (a PNG).

    ``results`` is one result, or ``{split: result}`` for a measurement of one split of points
    (``{"train": ..., "test": ...}`` overlays the splits). Returns the path, or ``None`` when
    matplotlib is not installed (a one-line notice says so) or the measurement has no figure.
    """
    drawer = DIAGNOSTICS.meta(name).get("plot")
    return drawer(results, path) if drawer is not None else None


def measure(name: str, model: Any, x: Any, y: Any = None, **options: Any) -> DiagnosticResult:
    """Run the measurement ``name`` on ``(model, x, y)`` with ``options``.

    ``gaps`` takes the test points as options: ``measure("gaps", model, x_train, y_train,
    x_test=..., y_test=..., attack=...)``. See :func:`create_diagnostic` for the errors.
    """
    return create_diagnostic(name, **options)(model, x, y)
