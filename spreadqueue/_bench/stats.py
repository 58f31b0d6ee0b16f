"""Pure statistics for the benchmark: latency percentiles, medians across runs, spreads."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["latency_summary", "median_of_runs", "percentile", "spread_summary"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ``ordered`` (sorted), by nearest rank.

    Nearest rank always returns a value that was measured (no interpolation), so a p99
    of 100 samples is the 99th smallest and the p100 is the maximum.
    """
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def latency_summary(latencies_ns: Iterable[int]) -> dict[str, float]:
    """p50, p90, p99, max, min and mean of latencies given in nanoseconds, in microseconds.

    Raises ValueError when there are no latencies: a phase that measured none must not
    report any.
    """
    ordered = sorted(latencies_ns)
    if not ordered:
        raise ValueError("no latencies were measured")
    us = [v / 1000.0 for v in ordered]
    return {
        "p50": percentile(us, 50),
        "p90": percentile(us, 90),
        "p99": percentile(us, 99),
        "max": us[-1],
        "min": us[0],
        "mean": statistics.fmean(us),
        "count": len(us),
    }


def spread_summary(counts: Sequence[int]) -> dict[str, Any]:
    """How evenly ``counts`` (tasks per worker) are spread.

    ``within_2x`` is True when every worker did between half and twice the mean.
    """
    if not counts:
        raise ValueError("no workers")
    mean = statistics.fmean(counts)
    low, high = min(counts), max(counts)
    return {
        "min": low,
        "max": high,
        "mean": mean,
        "min_over_mean": low / mean if mean else 0.0,
        "max_over_mean": high / mean if mean else 0.0,
        "within_2x": bool(mean) and low >= mean / 2 and high <= 2 * mean,
        "counts": list(counts),
    }


def median_of_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result whose every number is the median of that number over ``runs``.

    Integers (counts) take the lower median, so they stay values some run saw. Nested
    mappings are merged key by key. Booleans are True only if true in every
    run; a key missing or None in any run is None; other values (strings, lists) are
    taken from the first run.
    """
    if not runs:
        raise ValueError("no runs")
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values: list[Any] = [r.get(key) for r in runs]
        if any(v is None for v in values):
            out[key] = None
        elif isinstance(first, bool):
            out[key] = all(values)
        elif isinstance(first, int):
            out[key] = statistics.median_low(values)  # a count stays a count that was seen
        elif isinstance(first, float):
            out[key] = statistics.median(values)
        elif isinstance(first, Mapping):
            out[key] = median_of_runs(values)
        else:
            out[key] = first
    return out
