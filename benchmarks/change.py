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

Besides: recall@10 against exact search after 6,000 rows added and 6,000 removed at IVF sizes
(the structure a search then uses, against one built afresh from the same rows); query p50 of
an open index while another process compacts; and what small table files cost the reads every
search and run makes (the figures SMALL_FILES_MAX was chosen from).

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

from benchmarks import common
from benchmarks.common import ROOT, random_index, script, seed_export
from clipsearch.store.ann import FLAT_MAX

TARGET_S, TARGET_MB, TARGET_EXTRA_MB = 1.0, 50.0, 300.0
TARGET_SCAN_S, TARGET_SCAN_MB = 60.0, 1024.0
CHANGED = 10

# one change in a process of its own: (db, folder, what) -> JSON figures on the last line
_CHILD = """
import hashlib, json, os, resource, sys, time
import numpy as np
db, folder, what, dim = sys.argv[1:5]
from clipsearch.build.distributed import Embedded

def stub(paths, _known):
    for path in paths:
        v = np.random.default_rng(len(path)).normal(size=int(dim)).astype(np.float32)
        yield Embedded(path, hashlib.blake2b(path.encode(), digest_size=16).hexdigest(),
                       v / np.linalg.norm(v), 640, 480)

def io():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_oublock * 512, time.perf_counter()

import clipsearch, lancedb, faiss, pyarrow  # imported before the clock starts
from clipsearch import index_folders
written0, t0 = io()
wall0 = time.time()
if what == "compact":
    try:
        from clipsearch.build.builder import compact
    except ImportError:  # before issue 21: what every changing run ended with
        from clipsearch.store.table import Store
        compact = lambda db: Store.open(db).compact()
    compact(db)
    summary = None
else:
    import inspect
    # removing every photo of a folder: on purpose here (since issue 22 an emptied root is offline)
    kept = {"prune_offline": True} if what == "remove" and "prune_offline" in inspect.signature(
        index_folders).parameters else {}
    summary = index_folders([folder], db, fanout=stub, **kept)
written1, t1 = io()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
out = {"s": t1 - t0, "written_mb": (written1 - written0) / 1e6, "peak_mb": peak, "wall": [wall0, time.time()]}
if summary is not None:
    out.update(added=summary.added, removed=summary.removed, unchanged=summary.unchanged)
print(json.dumps(out))
"""


def _child(db: Path, folder: Path, what: str) -> dict:
    env = {**os.environ, "CLIPSEARCH_HOME": str(db.parent / "home"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(db), str(folder), what, str(common.DIM)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(r.stderr[-1500:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ready(work: Path, n: int) -> Path:
    """An index of `n` rows with everything a search reads written: structure, export, snapshot."""
    from clipsearch.build.fastprep import prepare_fast as prepare
    from clipsearch.store.ann import current

    db = work / f"change-{n}"
    store = random_index(db, n)
    seed_export(store.manifest.model, work)
    current(store, retry=True)
    prepare(store, lambda: None, retry=True)
    return db


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"new_{i:02d}.jpg").write_bytes(os.urandom(2000))


def measure_one(work: Path, n: int, compaction: bool = True, churn: int = 0) -> dict:
    db = _ready(work, n)
    folder = work / f"new-{n}"
    _photos(folder, CHANGED)
    add = _child(db, folder, "index")
    assert add["added"] == CHANGED, add
    for f in folder.iterdir():
        f.unlink()
    remove = _child(db, folder, "remove")
    assert remove["removed"] == CHANGED, remove
    out = {"rows": n, "add": add, "remove": remove}
    if churn:
        out["recall"] = recall_after_churn(db, churn)
    if compaction:
        out["compact"], out["during_compaction"] = searches_during(db, lambda: _child(db, folder, "compact"))
    import shutil

    shutil.rmtree(db, ignore_errors=True)
    return out


def recall_after_churn(db: Path, churn: int, queries: int = 100, k: int = 10) -> dict:
    """recall@10 against exact search after `churn` rows added and as many removed, each commit
    a delta: the structure a search then uses, against one built afresh from the same rows."""
    import numpy as np
    import pyarrow as pa

    from benchmarks.common import ClusteredVectors
    from benchmarks.scale import exact_top
    from clipsearch.store import ann
    from clipsearch.store.table import Store

    store = Store.open(db)
    vectors = ClusteredVectors()  # the base's topics (random_index's), drawn afresh
    first = store.manifest.next_id
    for start in range(0, churn, 1000):
        m = min(1000, churn - start)
        ids = np.arange(first + start, first + start + m)
        store.add(pa.table({
            "id": ids, "path": [f"/churn/{i}.jpg" for i in ids], "size": np.full(m, 1),
            "mtime_ns": np.zeros(m, np.int64),
            "hash": [f"{i:032x}" for i in ids], "width": np.full(m, 640, np.int32),
            "height": np.full(m, 480, np.int32), "taken": pa.nulls(m, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.draw(m).ravel()), vectors.dim)}))
        store.manifest.next_id = int(ids[-1]) + 1
        store.delete_paths([f"/photos/{i // 1000:03d}/IMG_{i:07d}.jpg" for i in range(start, start + m)])
        ann.commit(store)
    kept = ann.AnnIndex.load(db, store.version)
    fresh = ann._built(store, store.count())
    qs = vectors.queries(queries)
    truth = exact_top(store, qs, k)

    def recall(structure) -> float:
        found = sum(len(set(structure.search(q, 2 * k + 10)[1][:2 * k + 10]) & set(t))
                    for q, t in zip(qs, truth, strict=True))
        return found / (queries * k)

    store.manifest.next_id = first + churn
    store.save_manifest()
    return {"churn": churn, "delta_rows": kept.delta.size(), "kind": kept.kind,
            "kept": recall(kept), "fresh": recall(fresh)}


def searches_during(db: Path, work) -> tuple[dict, dict]:
    """Query p50 of an open index (as a server holds it) idle, then while `work()` runs in
    another process: (what work returned, the latencies)."""
    import threading
    import time

    import numpy as np

    from benchmarks.common import ClusteredVectors, percentile_ms
    from clipsearch.search.engine import open_index

    index = open_index(db)
    qs = ClusteredVectors(seed=3).queries(64)

    def one(i: int) -> tuple[float, float]:
        began, wall = time.perf_counter(), time.time()
        index.search_vector(qs[i % len(qs)], 10)
        return wall, time.perf_counter() - began

    for i in range(20):
        one(i)
    idle = [one(i)[1] for i in range(200)]
    done, timed_ = threading.Event(), []
    result = {}
    thread = threading.Thread(target=lambda: (result.update(out=work()), done.set()))
    thread.start()
    i = 0
    while not done.is_set() and i < 100_000:
        timed_.append(one(i))
        i += 1
    thread.join()
    start, end = result["out"]["wall"]  # the compaction itself, not the process starting
    busy = [t for wall, t in timed_ if start <= wall <= end] or [t for _, t in timed_[-1:]]
    del np
    return result["out"], {"idle_p50_ms": percentile_ms(idle), "busy_p50_ms": percentile_ms(busy),
                           "queries": len(busy)}


def fragment_cost(work: Path, n: int, piles: tuple[int, ...] = (0, 32, 128)) -> list[dict]:
    """What small table files cost the reads every search and run makes, to choose when to merge:
    query p50 (FAISS and the rows' lookup) and the diff's read of the stored rows, with 0, 32 and
    128 single-row commits on top of `n` rows."""
    import time

    import numpy as np
    import pyarrow as pa

    from benchmarks.common import ClusteredVectors, percentile_ms
    from clipsearch.build.indexer import DIFF_COLUMNS
    from clipsearch.search.engine import open_index

    db = work / f"fragments-{n}"
    store = random_index(db, n)
    vectors, out, made = ClusteredVectors(seed=5), [], 0
    qs = vectors.queries(32)
    for pile in piles:
        for i in range(made, pile):
            store.add(pa.table({
                "id": [n + i], "path": [f"/new/{i}.jpg"], "size": [1], "mtime_ns": [0], "hash": [f"{i:032x}"],
                "width": pa.array([1], pa.int32()), "height": pa.array([1], pa.int32()),
                "taken": pa.nulls(1, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.draw(1).ravel()), vectors.dim)}))
        made = max(made, pile)
        index = open_index(db)
        index.search_vector(qs[0], 10)
        times = []
        for i in range(100):
            began = time.perf_counter()
            index.search_vector(qs[i % len(qs)], 10)
            times.append(time.perf_counter() - began)
        began = time.perf_counter()
        for _ in range(3):
            store.read(DIFF_COLUMNS)
        out.append({"small_files": pile, "query_p50_ms": percentile_ms(times),
                    "diff_read_s": (time.perf_counter() - began) / 3})
    del np
    import shutil

    shutil.rmtree(db, ignore_errors=True)
    return out


def scan_one(work: Path, n: int) -> dict:
    """A plain `index` run over a folder of `n` photos (empty files, rows made to match them)
    that finds 10 new ones."""
    import hashlib

    import numpy as np
    import pyarrow as pa

    from clipsearch.store.table import Manifest, Store

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
            "size": np.array([s.st_size for s in stats]),
            "mtime_ns": np.array([s.st_mtime_ns for s in stats]),
            "hash": [hashlib.blake2b(p.encode(), digest_size=16).hexdigest() for p in chunk],
            "width": np.full(m, 640, np.int32), "height": np.full(m, 480, np.int32),
            "taken": pa.nulls(m, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 512)}))
    store.manifest.next_id = n
    store.manifest.roots = [str(root)]
    store.save_manifest()
    store.compact()
    seed_export(store.manifest.model, work)
    from clipsearch.build.fastprep import prepare_fast as prepare
    from clipsearch.store.ann import current

    current(store, retry=True)
    prepare(store, lambda: None, retry=True)
    _photos(root / "new", CHANGED)
    figures = _child(db, root, "index")
    assert figures["added"] == CHANGED and figures["unchanged"] == n, figures
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(db, ignore_errors=True)
    return {"files": n, **figures}


def measure(work: Path, sizes: list[int], scan_sizes: list[int] | None = None, churn: int = 6000,
            fragments: int = 0, compaction: bool = True) -> dict:
    base = measure_one(work, CHANGED, compaction=False)
    figures = {"baseline": base, "sizes": [measure_one(work, n, compaction, churn if n > FLAT_MAX else 0)
                                           for n in sizes]}
    figures["scan"] = [scan_one(work, n) for n in (scan_sizes or [])]
    if fragments:
        figures["fragments"] = {"rows": fragments, "piles": fragment_cost(work, fragments)}
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
            print(f"  {CHANGED}-photo {kind} at {s['rows']:>9,} rows: {r['s']:.2f} s "
                  f"(target <= {TARGET_S:g}), "
                  f"{r['written_mb']:.1f} MB written (<= {TARGET_MB:g}), peak {r['peak_mb']:.0f} MB, "
                  f"{extra:+.0f} MB over the baseline (<= {TARGET_EXTRA_MB:g})")
        if "compact" in s:
            c, q = s["compact"], s["during_compaction"]
            print(f"  compaction at {s['rows']:>9,} rows: {c['s']:.2f} s, {c['written_mb']:.1f} MB written, "
                  f"peak {c['peak_mb']:.0f} MB; query p50 {q['idle_p50_ms']:.2f} ms idle, "
                  f"{q['busy_p50_ms']:.2f} ms during it ({q['queries']} queries; target <= 2x)")
        if "recall" in s:
            r = s["recall"]
            print(f"  recall@10 after {r['churn']:,} rows added and {r['churn']:,} removed ({r['kind']}, "
                  f"delta of {r['delta_rows']:,}): {r['kept']:.3f}; a fresh build {r['fresh']:.3f} "
                  "(target: no lower)")
    if "fragments" in f:
        for p in f["fragments"]["piles"]:
            print(f"  {f['fragments']['rows']:,} rows and {p['small_files']:>3} small files left by commits: "
                  f"query p50 {p['query_p50_ms']:.2f} ms, the diff's read of the stored rows "
                  f"{p['diff_read_s']:.2f} s")
    for s in f.get("scan", []):
        print(f"  index over {s['files']:,} photos finding {CHANGED} new: {s['s']:.1f} s (target <= "
              f"{TARGET_SCAN_S:g}), peak {s['peak_mb']:.0f} MB (<= {TARGET_SCAN_MB:g}), "
              f"{s['written_mb']:.1f} MB written")


def main() -> None:
    script(__doc__, "# change cost: a 10-photo add and remove, outside the model",
           {"--sizes": {"default": "10000,100000,1000000"}, "--scan": {"default": "1000000"},
            "--churn": {"type": int, "default": 6000}, "--fragments": {"type": int, "default": 100_000},
            "--no-compact": {"action": "store_true"}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",") if s],
                                   [int(s) for s in a.scan.split(",") if s], a.churn, a.fragments,
                                   not a.no_compact), report)


if __name__ == "__main__":
    main()
