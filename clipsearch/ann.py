"""FAISS search structure, derived from the table and persisted beside it.

The kind follows the collection's size: up to FLAT_MAX vectors an exact flat index (a query
scans everything, under ~10 ms); above it an inverted file over 8-bit scalar-quantised vectors
(IVF-SQ8: a quarter of the memory of float32, a query scans a few percent of it). IVF results
are re-scored exactly by the caller from the stored vectors, so scores are true cosines.

The file name carries the table version it mirrors, so a stale or missing file is recognised
without trusting any other bookkeeping. A stale file is brought up to date by adding and removing
rows by id (row ids are never reused), and rebuilt only when missing, damaged, or when the
collection outgrew the structure it has (its kind, or 4x the size its IVF was trained for).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from clipsearch.files import replacing

if TYPE_CHECKING:
    from clipsearch.results import Unwritten
    from clipsearch.store import Store

ANN_DIR = "ann"
FLAT_MAX = 50_000
# k-means on a sample this many times the number of lists: FAISS asks for 30-256
TRAIN_PER_LIST = 40
_FILE = re.compile(r"^faiss-v(\d+)\.index$")


def kind_for(n: int) -> str:
    return "flat" if n <= FLAT_MAX else "ivf"


def nlist_for(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two: 1024 at 65k vectors, 4096 at 1M."""
    return max(256, 1 << round(math.log2(4 * math.sqrt(max(n, 1)))))


def nprobe_for(nlist: int) -> int:
    """Lists scanned per query: 1/32 of them, so ~3% of the vectors (1.5 ms at 1M here)."""
    return max(16, nlist // 32)


def describe(n: int) -> str:
    """What `info` says about the structure an index of `n` images searches with."""
    if kind_for(n) == "flat":
        return "flat (exact)"
    nlist = nlist_for(n)
    return f"ivf (IVF{nlist},SQ8, {nprobe_for(nlist)} lists per query; re-scored exactly)"


class AnnIndex:
    """Inner-product search over L2-normalised vectors (so scores are cosines)."""

    def __init__(self, index: faiss.Index, table_version: int) -> None:
        self._index = index
        self.table_version = table_version

    # -- creating and updating ---------------------------------------------------------------
    @classmethod
    def empty(cls, n: int, dim: int, sample: np.ndarray | None = None) -> AnnIndex:
        """An empty index of the kind suited to `n` vectors; IVF is trained on `sample`."""
        if kind_for(n) == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), -1)
        nlist = nlist_for(n)
        index = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample, np.float32))
        index.nprobe = nprobe_for(nlist)
        return cls(index, -1)

    @property
    def kind(self) -> str:
        return "flat" if isinstance(self._index, faiss.IndexIDMap2) else "ivf"

    @property
    def nlist(self) -> int:
        return faiss.extract_index_ivf(self._index).nlist if self.kind == "ivf" else 0

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def outgrown(self, n: int) -> bool:
        """Whether `n` vectors call for another structure than this one (rebuild, not update)."""
        if kind_for(n) != self.kind:
            return True
        return self.kind == "ivf" and not self.nlist / 2 < nlist_for(n) < self.nlist * 2

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                     np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))

    def ids(self) -> np.ndarray:
        """Every row id held, in no particular order."""
        if self.kind == "flat":
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(self._index).invlists
        parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                 for i in range(invlists.nlist) if invlists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    # -- searching ---------------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest rows to one query vector, best first.

        `allowed` restricts the search to those ids inside FAISS, so a filter never costs top-k.
        IVF scans more lists the fewer rows a filter allows, so the allowed rows it reaches stay
        as many as an unfiltered search reaches; IVF scores are approximate (8-bit vectors).
        """
        k = min(k, self.size if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        sel = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
        if self.kind == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:
            nlist = self.nlist
            share = 1.0 if allowed is None else max(len(allowed) / max(self.size, 1), 1e-9)
            nprobe = min(nlist, math.ceil(nprobe_for(nlist) / share))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        scores, ids = self._index.search(
            np.ascontiguousarray(query.reshape(1, -1), np.float32), k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def within(self, queries: np.ndarray, threshold: float, nprobe: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, id, score) of every stored vector scoring at least `threshold` with one of
        `queries` (a range search; IVF scans `nprobe` lists per query, and its scores are 8-bit
        approximations within ~0.002 of the cosine)."""
        params = None if self.kind == "flat" or nprobe is None else faiss.SearchParametersIVF(nprobe=nprobe)
        return range_search(self._index, queries, threshold, params)

    # -- files -------------------------------------------------------------------------------
    @staticmethod
    def _file(db: Path, table_version: int) -> Path:
        return Path(db) / ANN_DIR / f"faiss-v{table_version}.index"

    def save(self, db: Path) -> None:
        """Write atomically, then drop files of older table versions (never newer ones: a server
        that has not caught up yet must not delete what an index run has just written)."""
        from clipsearch import derived

        target = self._file(db, self.table_version)
        target.parent.mkdir(exist_ok=True)
        # through a Python file: a write error is an OSError here, where FAISS's own file writer
        # raises a long RuntimeError and prints "close error" on the terminal by itself
        with replacing(target) as tmp, open(tmp, "wb") as f:
            written = derived.Hashing(f)
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(written.write))
        derived.record_sum(target, written)
        for old in target.parent.glob("faiss-v*.index"):
            if (m := _FILE.match(old.name)) and int(m.group(1)) < self.table_version:
                with contextlib.suppress(OSError):
                    derived.remove(old)

    def file_bytes(self) -> int:
        """About what its file takes on disk."""
        n, dim = self.size, self._index.d
        if self.kind == "flat":
            return n * (4 * dim + 8) + 4096
        return n * (dim + 8) + self.nlist * (4 * dim + 64) + 4096

    @classmethod
    def saved(cls, db: Path, table_version: int) -> bool:
        return cls._file(db, table_version).is_file()

    @classmethod
    def load(cls, db: Path, table_version: int) -> AnnIndex | None:
        """The saved index for this table version, or None when missing or damaged."""
        path = cls._file(db, table_version)
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            return None
        if not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIVF):
            return None
        return cls(index, table_version)

    @classmethod
    def load_latest(cls, db: Path, before: int) -> AnnIndex | None:
        """The newest readable saved index of a table version up to `before`, or None."""
        versions = []
        with contextlib.suppress(OSError):
            for path in (Path(db) / ANN_DIR).iterdir():
                if (m := _FILE.match(path.name)) and int(m.group(1)) <= before:
                    versions.append(int(m.group(1)))
        for version in sorted(versions, reverse=True):
            if (ann := cls.load(db, version)) is not None:
                return ann
        return None


def current(store: Store, retry: bool = False, unwritten: list[Unwritten] | None = None) -> AnnIndex:
    """The search structure for the table's current version: the saved one if it matches, else an
    older one brought up to date, else one built from the table; saved for the next search when
    it can be (clipsearch.derived: a failed save is added to `unwritten`, and tried again only
    with `retry` or once the disk has the space it lacked)."""
    version, count = store.version, store.count()
    ann = AnnIndex.load_latest(store.path, version)
    if ann is not None and ann.table_version == version and ann.size == count:
        return ann
    if ann is None or ann.outgrown(count):
        ann = _built(store, count)
    else:
        _update(ann, store)
    ann.table_version = version
    _save(ann, store, retry, unwritten)
    return ann


def _save(ann: AnnIndex, store: Store, retry: bool, unwritten: list[Unwritten] | None) -> None:
    """A read-only or full disk still searches, from memory: the file is only a shortcut."""
    from clipsearch import derived

    if not derived.may_write(store.path, derived.SEARCH, retry):
        return
    try:
        ann.save(store.path)
    except OSError as exc:
        failure = derived.failed(store.path, derived.SEARCH, AnnIndex._file(store.path, ann.table_version),
                                 ann.file_bytes(), exc)
        if unwritten is not None:
            unwritten.append(failure)
    else:
        derived.succeeded(store.path, derived.SEARCH)


def _built(store: Store, count: int) -> AnnIndex:
    sample = None
    if kind_for(count) == "ivf":
        sample = store.sample_vectors(min(count, TRAIN_PER_LIST * nlist_for(count)))
    ann = AnnIndex.empty(count, store.manifest.dim, sample)
    for ids, vectors in store.iter_vectors():
        ann.add(ids, vectors)
    return ann


def _update(ann: AnnIndex, store: Store) -> None:
    """Add the table's rows the index lacks and remove those the table no longer has."""
    have = ann.ids()
    table_ids = store.read(["id"]).column("id").to_numpy()
    ann.remove(np.setdiff1d(have, table_ids, assume_unique=True))
    missing = np.setdiff1d(table_ids, have, assume_unique=True)
    if len(missing):
        # ids only grow, so new rows are those above the highest id the index has seen
        for ids, vectors in store.iter_vectors(f"id >= {int(missing.min())}"):
            new = np.isin(ids, missing, assume_unique=True)
            ann.add(ids[new], vectors[new])


def range_search(index: faiss.Index, queries: np.ndarray, threshold: float, params=None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, id, score) of every result of `index` at or above `threshold`."""
    lims, scores, found = index.range_search(np.ascontiguousarray(queries, np.float32), threshold,
                                             params=params)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims.astype(np.int64)))
    return rows, found.astype(np.int64), scores
