"""The percentile the benchmarks print: the value at that share of the sorted sample (nearest rank)."""

from __future__ import annotations


def percentile(values: list[float], share: float) -> float:
    """`share` in [0, 1]; NaN for an empty sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")
