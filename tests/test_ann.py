"""The search structure follows the collection's size: exact up to FLAT_MAX, IVF-SQ8 above, with
results re-scored exactly; it is updated by row id between table versions, rebuilt only when
outgrown, and filters keep top-k whatever their selectivity."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipsearch.search.engine import Index
from clipsearch.search.nearest import nearest
from clipsearch.store import ann as ann_module
from clipsearch.store.ann import FLAT_MAX, AnnIndex, current, describe, kind_for
from clipsearch.store.table import Manifest, Store

DIM = 32


def _vectors(rng, n, centers):
    x = centers[rng.integers(0, len(centers), n)] + 0.8 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rows(ids, vectors, folder="a"):
    return pa.table({
        "id": pa.array(ids, pa.int64()), "path": [f"/photos/{folder}/{i}.jpg" for i in ids],
        "size": pa.array(np.ones(len(ids)), pa.int64()), "mtime_ns": pa.array(np.zeros(len(ids)), pa.int64()),
        "hash": [f"h{i}" for i in ids], "width": pa.nulls(len(ids), pa.int32()),
        "height": pa.nulls(len(ids), pa.int32()), "taken": pa.nulls(len(ids), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
    })


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A real table of ~FLAT_MAX + 10,000 clustered unit vectors (IVF territory), 50 in folder b."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((300, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    n = FLAT_MAX + 30_000
    vectors = _vectors(rng, n, centers)
    path = tmp_path_factory.mktemp("big") / "db"
    store = Store.create(path, Manifest(model={"name": "synthetic"}, dim=DIM))
    for start in range(0, n, 20_000):
        ids = np.arange(start, min(n, start + 20_000))
        store.add(_rows(ids, vectors[ids], folder="b" if start == 0 else "a"))
    store.delete_paths([f"/photos/b/{i}.jpg" for i in range(50, 20_000)])
    store.compact()  # as a merge ends; at this size it adds the id, path and hash lookup indexes
    assert {tuple(i.columns) for i in store._table.list_indices()} == {("id",), ("path",), ("hash",)}
    keep = np.r_[np.arange(50), np.arange(20_000, n)]
    queries = _vectors(rng, 20, centers)
    return path, dict(zip(keep.tolist(), vectors[keep], strict=True)), queries, centers


def _exact(vectors: dict, query, k, allowed=None):
    ids = [i for i in vectors if allowed is None or i in allowed]
    scores = np.stack([vectors[i] for i in ids]) @ query
    order = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))[:k]
    return [ids[j] for j in order], [float(scores[j]) for j in order]


def test_the_kind_follows_the_size():
    assert kind_for(FLAT_MAX) == "flat" and kind_for(FLAT_MAX + 1) == "ivf"
    assert describe(13) == "flat (exact)"
    assert describe(1_000_000) == "ivf (IVF4096,SQ8, 128 lists per query; re-scored exactly)"


def test_ivf_search_finds_the_exact_neighbours_with_exact_scores(big):
    path, vectors, queries, _ = big
    index = Index(Store.open(path))
    assert index.ann.kind == "ivf" and index.ann.size == len(vectors)
    found = 0
    for q in queries:
        hits = index.search_vector(q, 10)
        truth, _ = _exact(vectors, q, 10)
        ids = [int(h.path.rsplit("/", 1)[1][:-4]) for h in hits]
        found += len(set(ids) & set(truth))
        for h, i in zip(hits, ids, strict=True):
            assert h.score == pytest.approx(float(vectors[i] @ q), abs=1e-5)  # true cosines
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert found / (10 * len(queries)) >= 0.95


def test_a_selective_filter_still_gets_the_exact_top_k(big):
    """50 allowed rows of 60,050: IVF scans as many lists as it takes to reach them."""
    path, vectors, queries, _ = big
    index = Index(Store.open(path))
    allowed = np.arange(50)  # folder b
    for q in queries[:5]:
        hits = nearest(index.store, index.ann, q, 10, allowed)
        truth, scores = _exact(vectors, q, 10, set(allowed.tolist()))
        assert [int(h.path.rsplit("/", 1)[1][:-4]) for h in hits] == truth
        assert [h.score for h in hits] == pytest.approx(scores, abs=1e-5)


def test_a_new_table_version_updates_the_saved_index_instead_of_rebuilding(big, tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "db"
    shutil.copytree(big[0], path)
    _, vectors, queries, centers = big
    store = Store.open(path)
    current(store)  # saved for this version
    rng = np.random.default_rng(1)
    new_ids = np.arange(90_000, 90_500)
    new = _vectors(rng, len(new_ids), centers)
    store.add(_rows(new_ids, new, folder="c"))
    store.delete_paths([f"/photos/a/{i}.jpg" for i in range(20_000, 21_000)])
    monkeypatch.setattr(AnnIndex, "empty", classmethod(lambda *a, **k: pytest.fail("rebuilt")))
    updated = current(store)
    monkeypatch.undo()
    table_ids = store.read(["id"]).column("id").to_numpy()
    assert sorted(updated.ids().tolist()) == sorted(table_ids.tolist())
    assert updated.table_version == store.version and AnnIndex.saved(path, store.version)

    expected = dict(vectors)
    for i in range(20_000, 21_000):
        del expected[i]
    expected.update(zip(new_ids.tolist(), new, strict=True))
    for q in queries[:5]:
        hits = Index(store).search_vector(q, 5)
        truth, _ = _exact(expected, q, 5)
        assert len(set(int(h.path.rsplit("/", 1)[1][:-4]) for h in hits) & set(truth)) >= 4


def test_an_outgrown_index_is_rebuilt_as_the_kind_its_size_needs(tmp_path):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((50, DIM))
    store = Store.create(tmp_path / "db", Manifest(model={"name": "synthetic"}, dim=DIM))
    store.add(_rows(np.arange(1000), _vectors(rng, 1000, centers)))
    assert current(store).kind == "flat"
    store.add(_rows(np.arange(1000, FLAT_MAX + 2000), _vectors(rng, FLAT_MAX + 1000, centers)))
    grown = current(store)
    assert grown.kind == "ivf" and grown.size == FLAT_MAX + 2000
    assert grown.nlist == ann_module.nlist_for(FLAT_MAX + 2000)
    assert AnnIndex.load(store.path, store.version).kind == "ivf"
