"""Assertions against a threshold that say how far they cleared it.

With fixed weights, two machines differ only by rounding, so a verdict that flips between them
sat within rounding of its bar. These helpers assert as plain comparisons do and, when
CLIPSEARCH_MARGINS names a file, append each margin to it as a JSON line; `python -m
tools.margins` runs the tests that use them under each CPU kernel and thread count and reports
the smallest margin each keeps.
"""

from __future__ import annotations

import json
import os

import numpy as np


def _record(what: str, value: float, bar: float, margin: float) -> None:
    out = os.environ.get("CLIPSEARCH_MARGINS")
    if not out:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" (")[0]
    line = {"test": test, "what": what, "value": float(value), "bar": float(bar), "margin": float(margin)}
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


def at_least(value: float, bar: float, what: str) -> None:
    _record(what, value, bar, value - bar)
    assert value >= bar, f"{what}: {value} < {bar}"


def close(got, want, atol: float, what: str) -> None:
    """Every element of `got` within `atol` of `want`; the margin is what is left of `atol`."""
    worst = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)), initial=0.0))
    _record(what, worst, atol, atol - worst)
    assert worst <= atol, f"{what}: off by {worst} > {atol}"
