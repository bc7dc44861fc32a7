"""A write into a full disk cache (thumbnails, re-rank features): what it costs once the cache is
at its bound, when each write evicts. Before: every such write swept (globbed and stat-ed) the
whole folder, since a trim stopped right at the bound. After: a trim goes down to a low-water
mark (90%), so a full cache is swept once per tenth of its bound written.

    python -m benchmarks --only diskcache
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import percentile_ms
from clipsearch.store.diskcache import LOW_WATER, DiskCache

ENTRY = 1000  # bytes with the checksum; the sweep's cost is per file, whatever its size
TARGET_P95_MS = 5.0


def _full(folder: Path, entries: int, low_water: float) -> DiskCache:
    cache = DiskCache(folder, "256", entries * ENTRY, ".webp", low_water=low_water)
    payload = bytes(ENTRY - 21)
    for i in range(entries):
        cache.write(f"{i:08d}", payload)
    return cache


def _writes(cache: DiskCache, start: int, n: int) -> list[float]:
    payload, times = bytes(ENTRY - 21), []
    for i in range(start, start + n):
        began = time.perf_counter()
        cache.write(f"{i:08d}", payload)
        times.append(time.perf_counter() - began)
    return times


def measure(work: Path, entries: int, writes: int, writes_before: int) -> dict:
    """A cache of `entries` thumbnails at its bound (80,000 at the default 2 GiB of 26 KB
    thumbnails); then `writes` more, timed one by one. "before" trims to the bound itself, as
    the cache did before the low-water mark (fewer writes: each one sweeps)."""
    figures = {"entries": entries}
    for name, low_water, n in (("before", 1.0, writes_before), ("after", LOW_WATER, writes)):
        cache = _full(work / f"diskcache-{name}", entries, low_water)
        times = _writes(cache, entries, n)
        figures[name] = {"writes": n, "p50_ms": percentile_ms(times, 50), "p95_ms": percentile_ms(times, 95),
                         "max_ms": max(times) * 1000, "entries_after": len(cache._entries())}
    return figures


def report(f: dict) -> None:
    for name in ("before", "after"):
        r = f[name]
        print(f"  {name:>6}: a write into a full cache of {f['entries']:,} entries: "
              f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms (target <= {TARGET_P95_MS:g} ms at p95), "
              f"max {r['max_ms']:.0f} ms; "
              f"{r['writes']} writes, {r['entries_after']:,} entries left")
