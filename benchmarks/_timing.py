"""Summary statistics of repeated timings, shared by the benchmark modules."""

from __future__ import annotations

import statistics


def stats(times: list[float]) -> dict[str, float]:
    """Median, min and max of ``times`` and how many there were."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "runs": len(times),
    }
