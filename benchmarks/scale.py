"""Scale: the search structure at 100k and 1M stored vectors: build time, resident memory, query
p50 and recall@10 against exact search (targets, issue 5, at 1M: p50 <= 10 ms, recall@10 >= 0.95,
<= 1.2 GB).

    python -m benchmarks.scale                     # 100k and 1M (about 5 minutes here)
    python -m benchmarks.scale --sizes 100000

The vectors are clustered unit vectors (benchmarks.common.ClusteredVectors) in a real LanceDB
table; queries come from the same topics but farther out, as text queries sit farther from
photos than photos from each other. "search" is the FAISS stage; "with rows" is what a search
returns: candidates re-scored exactly from the table, paths looked up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import ClusteredVectors, percentile_ms, random_index, script, timed

RSS_PROBE = """
import sys
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) / 1024
import faiss, numpy
from clipsearch.store.ann import AnnIndex
before = rss()
ann = AnnIndex.load(sys.argv[1], int(sys.argv[2]))
print(rss() - before)
"""


def exact_top(store, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids of the exact top k for each query, by streaming the table."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), k), np.int64)
    for ids, vectors in store.iter_vectors():
        scores = queries @ vectors.T
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return best_ids


def measure_one(work: Path, n: int, queries: int = 100, k: int = 10) -> dict:
    from clipsearch.search.nearest import nearest
    from clipsearch.store.ann import current, describe

    vectors = ClusteredVectors()
    table_s, store = timed(lambda: random_index(work / f"db-{n}", n, vectors))
    build_s, ann = timed(lambda: current(store))
    qs = vectors.queries(queries)
    truth = exact_top(store, qs, k)
    stage, full, found_stage, found_full = [], [], 0, 0
    for i, q in enumerate(qs):
        seconds, (_, ids) = timed(lambda q=q: ann.search(q, k))
        stage.append(seconds)
        found_stage += len(set(ids.tolist()) & set(truth[i].tolist()))
        seconds, hits = timed(lambda q=q: nearest(store, ann, q, k))
        full.append(seconds)
        paths = {h.path for h in hits}
        found_full += sum(f"/photos/{t // 1000:03d}/IMG_{t:07d}.jpg" in paths for t in truth[i])
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(store.path), str(store.version)],
                           capture_output=True, text=True, check=True)
    file = next((store.path / "ann").glob("faiss-v*.index"))
    return {"vectors": n, "structure": describe(n), "table_s": table_s, "build_s": build_s,
            "index_mb": float(probe.stdout.strip()), "file_mb": file.stat().st_size / 1e6,
            "search_p50_ms": percentile_ms(stage), "with_rows_p50_ms": percentile_ms(full),
            "recall_at_10_search": found_stage / (k * queries), "recall_at_10": found_full / (k * queries)}


def measure(work: Path, sizes: list[int]) -> dict:
    out = {}
    for n in sizes:
        out[str(n)] = measure_one(work, n)
        shutil.rmtree(work / f"db-{n}", ignore_errors=True)
    return out


def report(figures: dict) -> None:
    for f in figures.values():
        print(f"  {f['vectors']:>9,} vectors, {f['structure']}: built in {f['build_s']:.1f} s, "
              f"{f['index_mb']:.0f} MB resident ({f['file_mb']:.0f} MB file); "
              f"p50 {f['search_p50_ms']:.2f} ms search, {f['with_rows_p50_ms']:.1f} ms with rows; "
              f"recall@10 {f['recall_at_10_search']:.3f} "
              f"search, {f['recall_at_10']:.3f} re-scored")


def main() -> None:
    script(__doc__, "# search structure at scale (targets at 1M: p50 <= 10 ms, recall@10 >= 0.95, <= 1.2 GB)",
           {"--sizes": {"default": "100000,1000000"}},
           lambda work, a: measure(work, [int(s) for s in a.sizes.split(",")]), report)

if __name__ == "__main__":
    main()
