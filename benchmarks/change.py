"""Change cost: what committing a small change costs at each library size (issue 21).

    python -m benchmarks.change                        # 10k, 100k and 1M rows (about 15 minutes here)
    python -m benchmarks.change --sizes 10000,100000

Each size is a real index of clustered random vectors (benchmarks.common.random_index) made
ready for every search path: the search structure saved, the text export and the row snapshot
written. Then, each in a new process: `index` over a folder of 10 new photos (an add), the same
folder once they are deleted (a remove), and a forced compaction. The photos' vectors come from
a stub where the model's would (`fanout`), so what is timed is everything outside the model: the
scan and diff, the table commit, the search structure and the snapshot. Seconds are the call's;
bytes written and peak memory are the process's own counters (getrusage's ru_oublock; VmHWM,
since ru_maxrss carries the parent's peak over through fork and exec).
The same change to a 10-row index is the memory baseline.

Targets at 1M rows: a 10-photo change at most 1 s and 50 MB written, peak memory within 300 MB of
the 10-row index's. A plain `index` run over a 1M-photo folder that finds 10 changes (the
`scan` figures; the files are real, empty files): at most 60 s and 1 GB peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, random_index, script, seed_export

TARGET_S, TARGET_MB, TARGET_EXTRA_MB = 1.0, 50.0, 300.0
TARGET_SCAN_S, TARGET_SCAN_MB = 60.0, 1024.0
CHANGED = 10

# one change in a process of its own: (db, folder, what) -> JSON figures on the last line
_CHILD = """
import hashlib, json, os, resource, sys, time
import numpy as np
db, folder, what = sys.argv[1:4]
from clipsearch.distributed import Embedded

def stub(paths, _known):
    for path in paths:
        v = np.random.default_rng(len(path)).normal(size=512).astype(np.float32)
        yield Embedded(path, hashlib.blake2b(path.encode(), digest_size=16).hexdigest(),
                       v / np.linalg.norm(v), 640, 480)

def io():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_oublock * 512, time.perf_counter()

import clipsearch, lancedb, faiss, pyarrow  # imported before the clock starts
from clipsearch import index_folders
written0, t0 = io()
if what == "compact":
    try:
        from clipsearch.build import compact
    except ImportError:  # before issue 21: what every changing run ended with
        from clipsearch.store import Store
        compact = lambda db: Store.open(db).compact()
    compact(db)
    summary = None
else:
    summary = index_folders([folder], db, fanout=stub)
written1, t1 = io()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
out = {"s": t1 - t0, "written_mb": (written1 - written0) / 1e6, "peak_mb": peak}
if summary is not None:
    out.update(added=summary.added, removed=summary.removed, unchanged=summary.unchanged)
print(json.dumps(out))
"""


def _child(db: Path, folder: Path, what: str) -> dict:
    env = {**os.environ, "CLIPSEARCH_HOME": str(db.parent / "home"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(db), str(folder), what],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(r.stderr[-1500:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ready(work: Path, n: int) -> Path:
    """An index of `n` rows with everything a search reads written: structure, export, snapshot."""
    from clipsearch.ann import current
    from clipsearch.build import prepare_fast as prepare

    db = work / f"change-{n}"
    store = random_index(db, n)
    seed_export(db, store.manifest.model, work)
    current(store, retry=True)
    prepare(store, lambda: None, retry=True)
    return db


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"new_{i:02d}.jpg").write_bytes(os.urandom(2000))


def measure_one(work: Path, n: int, compaction: bool = True) -> dict:
    db = _ready(work, n)
    folder = work / f"new-{n}"
    _photos(folder, CHANGED)
    add = _child(db, folder, "index")
    assert add["added"] == CHANGED, add
    for f in folder.iterdir():
        f.unlink()
    remove = _child(db, folder, "index")
    assert remove["removed"] == CHANGED, remove
    out = {"rows": n, "add": add, "remove": remove}
    if compaction:
        out["compact"] = _child(db, folder, "compact")
    import shutil

    shutil.rmtree(db, ignore_errors=True)
    return out


def scan_one(work: Path, n: int) -> dict:
    """A plain `index` run over a folder of `n` photos (empty files, rows made to match them)
    that finds 10 new ones."""
    import hashlib

    import numpy as np
    import pyarrow as pa

    from clipsearch.store import Manifest, Store

    root = work / f"scan-{n}"
    paths = []
    for i in range(n):
        sub = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        p = sub / f"IMG_{i:07d}.jpg"
        p.touch()
        paths.append(str(p))
    db = work / f"scan-db-{n}"
    store = Store.create(db, Manifest(model={"name": "ViT-B-32", "pretrained": "random"}, dim=512))
    rng = np.random.default_rng(0)
    for start in range(0, n, 50_000):
        chunk = paths[start:start + 50_000]
        m = len(chunk)
        vectors = rng.normal(size=(m, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        stats = [os.stat(p) for p in chunk]
        store.add(pa.table({
            "id": np.arange(start, start + m), "path": chunk,
            "size": np.array([s.st_size for s in stats]), "mtime_ns": np.array([s.st_mtime_ns for s in stats]),
            "hash": [hashlib.blake2b(p.encode(), digest_size=16).hexdigest() for p in chunk],
            "width": np.full(m, 640, np.int32), "height": np.full(m, 480, np.int32),
            "taken": pa.nulls(m, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 512)}))
    store.manifest.next_id = n
    store.manifest.roots = [str(root)]
    store.save_manifest()
    store.compact()
    seed_export(db, store.manifest.model, work)
    from clipsearch.ann import current
    from clipsearch.build import prepare_fast as prepare

    current(store, retry=True)
    prepare(store, lambda: None, retry=True)
    _photos(root / "new", CHANGED)
    figures = _child(db, root, "index")
    assert figures["added"] == CHANGED and figures["unchanged"] == n, figures
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(db, ignore_errors=True)
    return {"files": n, **figures}


def measure(work: Path, sizes: list[int], scan_sizes: list[int] | None = None) -> dict:
    base = measure_one(work, CHANGED, compaction=False)
    figures = {"baseline": base, "sizes": [measure_one(work, n) for n in sizes]}
    figures["scan"] = [scan_one(work, n) for n in (scan_sizes or [])]
    return figures


def report(f: dict) -> None:
    base = f["baseline"]
    for kind in ("add", "remove"):
        b = base[kind]
        print(f"  {CHANGED}-photo {kind} to a {base['rows']}-row index: {b['s']:.2f} s, "
              f"{b['written_mb']:.1f} MB written, peak {b['peak_mb']:.0f} MB (the baseline)")
    for s in f["sizes"]:
        for kind in ("add", "remove"):
            r = s[kind]
            extra = r["peak_mb"] - base[kind]["peak_mb"]
            print(f"  {CHANGED}-photo {kind} at {s['rows']:>9,} rows: {r['s']:.2f} s (target <= {TARGET_S:g}), "
                  f"{r['written_mb']:.1f} MB written (<= {TARGET_MB:g}), peak {r['peak_mb']:.0f} MB, "
                  f"{extra:+.0f} MB over the baseline (<= {TARGET_EXTRA_MB:g})")
        if "compact" in s:
            c = s["compact"]
            print(f"  compaction at {s['rows']:>9,} rows: {c['s']:.2f} s, {c['written_mb']:.1f} MB written, "
                  f"peak {c['peak_mb']:.0f} MB")
    for s in f.get("scan", []):
        print(f"  index over {s['files']:,} photos finding {CHANGED} new: {s['s']:.1f} s (target <= "
              f"{TARGET_SCAN_S:g}), peak {s['peak_mb']:.0f} MB (<= {TARGET_SCAN_MB:g}), "
              f"{s['written_mb']:.1f} MB written")


def main() -> None:
    script(__doc__, "# change cost: a 10-photo add and remove, outside the model",
           {"--sizes": {"default": "10000,100000,1000000"}, "--scan": {"default": "1000000"},
            "--no-compact": {"action": "store_true"}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",") if s],
                                   [int(s) for s in a.scan.split(",") if s]), report)


if __name__ == "__main__":
    main()
