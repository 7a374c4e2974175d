"""robustlab: adversarial-training research on width x λ x ε, trained, attacked and explained.

Subpackages: ``config`` (typed run configuration), ``data`` (datasets on the device),
``models`` (width-parameterized families), ``attacks`` (FGSM, PGD, ...), ``training``
(methods, loop, schedules, checkpoints), ``evaluation`` (accuracy, robustness, stability),
``store`` (SQLite results), ``cli`` (the ``robustlab`` command).
"""

__version__ = "0.1.0"
