"""Peak memory of `clipsearch index` as a fresh process on more and more photos: it must stay
flat, not grow with the library (issue 5, item 7).

    python -m benchmarks.memory                      # 250, 500 and 1,000 photos of 2 MP
    python -m benchmarks.memory --sizes 100,200
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import model_args, model_spec, photos, script, seed_export, timed

# A wrapper process per run, so that its children's peak is that one run's alone.
PEAK_OF_CHILD = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if r.returncode:
    sys.exit(r.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def measure(work: Path, sizes: list[int]) -> dict:
    script = str(Path(sys.executable).parent / "clipsearch")
    library = work / "library"
    all_photos = photos(library / "all", max(sizes), size=(1600, 1200))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSEARCH_HOME": str(work / "home")}
    out = {}
    for n in sizes:
        folder = library / f"first {n}"
        folder.mkdir()
        for p in all_photos[:n]:
            os.link(p, folder / Path(p).name)
        # the export is a one-off of an index's first run, made beforehand: its peak (about
        # 1.6 GB, model included) is not that of indexing
        seed_export(model_spec(work).to_dict(), work)
        # fp32, as the figures in docs/benchmarks.md were measured before auto became the default
        cmd = [script, "index", str(folder), "--db", str(work / f"db-{n}"), *model_args(work), "--precision",
               "fp32", "-q"]
        seconds, r = timed(lambda cmd=cmd: subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *cmd],
                                                          capture_output=True, text=True, env=env))
        if r.returncode:
            raise RuntimeError(r.stderr[-500:])
        out[str(n)] = {"photos": n, "peak_rss_mb": float(r.stdout.strip()), "seconds": seconds}
    return out


def report(figures: dict) -> None:
    runs = list(figures.values())
    print("  peak RSS of `clipsearch index` (fresh process, 2 MP photos): " + ", ".join(
        f"{f['photos']:,} photos {f['peak_rss_mb']:.0f} MB" for f in runs))
    if len(runs) > 1:
        growth = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
        print(f"  {runs[-1]['photos'] / runs[0]['photos']:.0f}x the photos, {growth:.2f}x the memory "
              "(target: bounded, not growing with the library)")


def main() -> None:
    script(__doc__, "# index memory", {"--sizes": {"default": "250,500,1000"}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",")]), report)

if __name__ == "__main__":
    main()
