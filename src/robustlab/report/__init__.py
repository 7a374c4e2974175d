"""Tables (and later plots) rendered from the results store or a run's metrics."""

from .table import format_value, render_table

__all__ = ["format_value", "render_table"]
