"""Recall@K, median rank and accuracy from the rank each query's right answer reached.

A rank is 1-based; None means the right answer was not among the results looked at (so it
counts as a miss for every K and sorts after every found rank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

KS = (1, 5, 10)


def recall(ranks: Sequence[int | None], ks: Sequence[int] = KS) -> dict[str, float]:
    """{"R@1": fraction of queries whose answer ranked 1, ...} (clip_benchmark's protocol)."""
    n = len(ranks)
    return {f"R@{k}": (sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0) for k in ks}


def median_rank(ranks: Sequence[int | None]) -> float | None:
    """The median rank (the mean of the middle two for an even count), None when the median falls
    among answers never found."""
    if not ranks:
        return None
    ordered = sorted(math.inf if r is None else r for r in ranks)
    n = len(ordered)
    middle = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return None if math.isinf(middle) else float(middle)


def first_rank(ranked: Sequence[int], right: set[int] | frozenset[int]) -> int | None:
    """The 1-based rank of the first right answer in a ranked list of ids."""
    return next((rank for rank, item in enumerate(ranked, start=1) if item in right), None)
