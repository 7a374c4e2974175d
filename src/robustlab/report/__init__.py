"""Tables (and later plots) rendered from the results store or a run's metrics."""

from .labels import attack_settings, evaluation_label, format_eps, stored_evaluation_label
from .table import format_value, render_table

__all__ = [
    "attack_settings",
    "evaluation_label",
    "format_eps",
    "format_value",
    "render_table",
    "stored_evaluation_label",
]
