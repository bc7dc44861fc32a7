"""FAISS search structure, derived from the table and persisted beside it.

The kind follows the collection's size: up to FLAT_MAX vectors an exact flat index (a query
scans everything, under ~10 ms); above it an inverted file over 8-bit scalar-quantised vectors
(IVF-SQ8: a quarter of the memory of float32, a query scans a few percent of it). IVF results
are re-scored exactly by the caller from the stored vectors, so scores are true cosines.

Each file's name carries the table version it mirrors, so a stale or missing file is recognised
without trusting any other bookkeeping. A base (`faiss-v<B>.index`, with its ids and kind beside
it) is written whole; each later commit writes only a delta (`delta-v<T>.npz`: the rows added
since B, searched exactly beside the base, and the ids of B's rows removed since), found by
comparing ids with the table's (clipsearch.store.layers). The delta is folded into a new base when it
grows past layers.merge_due, and the structure is rebuilt from the table only when missing,
damaged, or outgrown (its kind, or 4x the size its IVF was trained for).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from clipsearch.files import replacing
from clipsearch.store.layers import Delta, merge_due

if TYPE_CHECKING:
    from clipsearch.results import Unwritten
    from clipsearch.store.table import RowSource

ANN_DIR = "ann"
FLAT_MAX = 50_000
# k-means on a sample this many times the number of lists: FAISS asks for 30-256
TRAIN_PER_LIST = 40
_FILE = re.compile(r"^(faiss|delta)-v(\d+)\.(?:index|npz)$")


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
    """Inner-product search over L2-normalised vectors (so scores are cosines): a base FAISS
    index and, beside it, the rows added since it was written (searched exactly) and the ids of
    its rows removed since (clipsearch.store.layers)."""

    def __init__(self, index: faiss.Index, table_version: int, delta: Delta | None = None,
                 added: np.ndarray | None = None) -> None:
        self._index = index
        self._version = table_version
        self.delta = delta or Delta.none(table_version)
        self._added = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
        if len(self.delta.added):
            self._added.add_with_ids(np.ascontiguousarray(added, np.float32), self.delta.added)
        self._not_removed = None
        if len(self.delta.removed):
            self._removed_sel = faiss.IDSelectorBatch(self.delta.removed)
            self._not_removed = faiss.IDSelectorNot(self._removed_sel)

    @property
    def table_version(self) -> int:
        return self._version

    @table_version.setter
    def table_version(self, version: int) -> None:
        """A structure with no delta is a base: its base is of the version it is given."""
        if not self.delta.size() and self.delta.base == self._version:
            self.delta = Delta.none(version)
        self._version = version

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
        return int(self._index.ntotal) - len(self.delta.removed) + len(self.delta.added)

    @property
    def base_size(self) -> int:
        return int(self._index.ntotal)

    def outgrown(self, n: int) -> bool:
        """Whether `n` vectors call for another structure than this one (rebuild, not update)."""
        return _outgrown(self.kind, self.nlist, n)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                     np.ascontiguousarray(ids, np.int64))

    def folded(self, version: int, shared: bool) -> AnnIndex:
        """This structure as one base (the delta added to it, its removed rows taken out), at
        table version `version`. A `shared` base (one that searches may be using) is copied
        first: a structure in use is replaced, never changed."""
        index = faiss.clone_index(self._index) if shared else self._index
        folded = AnnIndex(index, version)
        if self.delta.size():
            index.remove_ids(faiss.IDSelectorBatch(self.delta.removed))
            folded.add(self.delta.added, self._added_vectors())
        return folded

    def with_delta(self, delta: Delta, added: np.ndarray, version: int) -> AnnIndex:
        """The same base with another delta (`added`: the vectors of `delta.added`, in order)."""
        return AnnIndex(self._index, version, delta, added)

    def _added_vectors(self) -> np.ndarray:
        n = len(self.delta.added)
        if not n:
            return np.zeros((0, self._index.d), np.float32)
        flat = faiss.downcast_index(self._added.index)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self._index.d).reshape(n, -1).copy()

    def ids(self) -> np.ndarray:
        """Every row id held, in no particular order."""
        base = _base_ids(self._index)
        if len(self.delta.removed):
            base = base[~np.isin(base, self.delta.removed)]
        return np.concatenate([base, self.delta.added])

    # -- searching ---------------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest rows to one query vector, best first.

        `allowed` restricts the search to those ids inside FAISS, so a filter never costs top-k.
        IVF scans more lists the fewer rows a filter allows, so the allowed rows it reaches stay
        as many as an unfiltered search reaches; IVF scores are approximate (8-bit vectors), and
        an IVF search returns the k best of the base and the k best of the delta (the caller
        re-scores them exactly). Rows with equal scores (copies of a photo) come in id order.
        """
        k = min(k, self.size if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        q = np.ascontiguousarray(query.reshape(1, -1), np.float32)
        keep = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
        sel = keep if keep is not None else self._not_removed  # allowed rows are rows of the table
        if self.kind == "flat":
            params = faiss.SearchParameters(sel=sel)
        else:
            nlist = self.nlist
            share = 1.0 if allowed is None else max(len(allowed) / max(self.size, 1), 1e-9)
            nprobe = min(nlist, math.ceil(nprobe_for(nlist) / share))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        fetch = k + 1  # one past the cut shows whether a tie straddles it
        while True:
            parts = [_found(*self._index.search(q, fetch, params=params))]
            if self._added.ntotal:
                parts.append(_found(*self._added.search(q, min(fetch, self._added.ntotal),
                                                        params=faiss.SearchParameters(sel=keep))))
            scores = np.concatenate([p[0] for p in parts])
            ids = np.concatenate([p[1] for p in parts])
            # ties in id order: the same answer whichever structure holds the rows (FAISS's own
            # order of ties at the cut follows the order rows were added in)
            order = np.lexsort((ids, -scores))
            if self.kind != "flat":
                return scores[order], ids[order]
            cut = scores[order[k - 1]] if len(order) >= k else None
            if cut is not None and any(len(p[1]) == fetch and p[0][-1] >= cut for p in parts):
                fetch *= 2  # rows tied with the k-th may lie past what was fetched
                continue
            order = order[:k]
            return scores[order], ids[order]

    def within(self, queries: np.ndarray, threshold: float, nprobe: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, id, score) of every stored vector scoring at least `threshold` with one of
        `queries` (a range search; IVF scans `nprobe` lists per query, and its scores are 8-bit
        approximations within ~0.002 of the cosine)."""
        params = None if self.kind == "flat" or nprobe is None else faiss.SearchParametersIVF(nprobe=nprobe)
        rows, ids, scores = range_search(self._index, queries, threshold, params)
        if len(self.delta.removed):
            keep = ~np.isin(ids, self.delta.removed)
            rows, ids, scores = rows[keep], ids[keep], scores[keep]
        if self._added.ntotal:
            more = range_search(self._added, queries, threshold)
            rows, ids, scores = (np.concatenate(pair) for pair in zip((rows, ids, scores), more, strict=True))
        return rows, ids, scores

    # -- files -------------------------------------------------------------------------------
    @staticmethod
    def _file(db: Path, table_version: int) -> Path:
        return Path(db) / ANN_DIR / f"faiss-v{table_version}.index"

    @staticmethod
    def _delta_file(db: Path, table_version: int) -> Path:
        return Path(db) / ANN_DIR / f"delta-v{table_version}.npz"

    @classmethod
    def files(cls, db: Path, table_version: int) -> list[Path]:
        """The files a search of this table version reads: a base, or a delta and its base."""
        delta = cls._delta_file(db, table_version)
        if not delta.is_file():
            return [cls._file(db, table_version)]
        found = _read_delta(delta)
        return [delta] if found is None else [cls._file(db, found[0].base), delta]

    def save(self, db: Path) -> None:
        """Write atomically, then drop files of older table versions (never newer ones: a server
        that has not caught up yet must not delete what an index run has just written). A
        structure with a delta writes only the delta (its base is on disk already)."""
        if self.delta.base != self.table_version:
            _write_delta(Path(db), self.table_version, self.delta, self._added_vectors())
            return
        from clipsearch.store import derived

        target = self._file(db, self.table_version)
        target.parent.mkdir(exist_ok=True)
        # through a Python file: a write error is an OSError here, where FAISS's own file writer
        # raises a long RuntimeError and prints "close error" on the terminal by itself
        with replacing(target) as tmp, open(tmp, "wb") as f:
            written = derived.Hashing(f)
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(written.write))
        derived.record_sum(target, written)
        _write_base_meta(target, np.sort(_base_ids(self._index)), self.kind, self.nlist)
        _drop_older(Path(db), self.table_version, self.table_version + 1)

    def file_bytes(self) -> int:
        """About what its file takes on disk."""
        dim = self._index.d
        if self.delta.base != self.table_version:
            return len(self.delta.added) * (4 * dim + 8) + len(self.delta.removed) * 8 + 4096
        n = self.base_size
        if self.kind == "flat":
            return n * (4 * dim + 8) + 4096
        return n * (dim + 8) + self.nlist * (4 * dim + 64) + 4096

    def save_to(self, db: Path) -> Callable[[], None]:
        return functools.partial(self.save, db)

    @classmethod
    def saved(cls, db: Path, table_version: int) -> bool:
        return cls._file(db, table_version).is_file() or cls._delta_file(db, table_version).is_file()

    @classmethod
    def load(cls, db: Path, table_version: int, have: AnnIndex | None = None) -> AnnIndex | None:
        """The saved structure for this table version, or None when missing or damaged. The base
        of `have` (a structure already in memory) is used when it is the one the delta needs."""
        delta_file = cls._delta_file(db, table_version)
        if delta_file.is_file():
            found = _read_delta(delta_file)
            if found is None:
                return None
            delta, vectors = found
            same = have is not None and have.delta.base == delta.base  # its base is in memory already
            base = AnnIndex(have._index, delta.base) if same else cls._load_base(db, delta.base)
            return None if base is None else base.with_delta(delta, vectors, table_version)
        if have is not None and have.table_version == table_version and not have.delta.size():
            return have
        return cls._load_base(db, table_version)

    @classmethod
    def _load_base(cls, db: Path, table_version: int) -> AnnIndex | None:
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
    def latest(cls, db: Path, before: int) -> int | None:
        """The newest table version up to `before` with a saved structure, or None."""
        versions = []
        with contextlib.suppress(OSError):
            for path in (Path(db) / ANN_DIR).iterdir():
                if (m := _FILE.match(path.name)) and int(m.group(2)) <= before:
                    versions.append(int(m.group(2)))
        return max(versions, default=None)


def _found(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]


def _outgrown(kind: str, nlist: int, n: int) -> bool:
    if kind_for(n) != kind:
        return True
    return kind == "ivf" and not nlist / 2 < nlist_for(n) < nlist * 2


def _base_ids(index: faiss.Index) -> np.ndarray:
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _write_delta(db: Path, version: int, delta: Delta, vectors: np.ndarray) -> None:
    from clipsearch.store import derived

    target = AnnIndex._delta_file(db, version)
    target.parent.mkdir(exist_ok=True)
    data = io.BytesIO()  # made whole first: a zip writer seeks back, the checksum reads forward
    np.savez(data, base=np.int64(delta.base), added=delta.added, removed=delta.removed,
             vectors=np.ascontiguousarray(vectors, np.float32))
    with replacing(target) as tmp, open(tmp, "wb") as f:
        written = derived.Hashing(f)
        written.write(data.getbuffer())
    derived.record_sum(target, written)
    _drop_older(db, delta.base, version)


def _write_base_meta(base_file: Path, ids: np.ndarray, kind: str, nlist: int) -> None:
    """What a commit needs of a base without reading it: its ids (sorted), kind and lists."""
    with replacing(base_file.with_suffix(".ids.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, ids)
    with replacing(base_file.with_suffix(".kind")) as tmp, open(tmp, "w") as f:
        f.write(f"{kind} {nlist}")


def _read_delta(path: Path) -> tuple[Delta, np.ndarray] | None:
    try:
        with np.load(path) as data:
            delta = Delta(int(data["base"]), data["added"].astype(np.int64), data["removed"].astype(np.int64))
            return delta, data["vectors"].astype(np.float32)
    except Exception:  # damaged in any way (a bad zip, a short array): made again from the table
        return None


def _drop_older(db: Path, base: int, version: int) -> None:
    """Remove the bases older than `base` and the deltas older than `version`."""
    from clipsearch.store import derived

    with contextlib.suppress(OSError):
        for old in (db / ANN_DIR).iterdir():
            m = _FILE.match(old.name)
            if m and int(m.group(2)) < (base if m.group(1) == "faiss" else version):
                with contextlib.suppress(OSError):
                    derived.remove(old)
                    if m.group(1) == "faiss":
                        old.with_suffix(".ids.npy").unlink(missing_ok=True)
                        old.with_suffix(".kind").unlink(missing_ok=True)


def _state(db: Path, version: int) -> tuple[int, Delta] | None:
    """The newest saved state up to `version` without loading any base: (its table version, its
    delta); None when there is none."""
    latest = AnnIndex.latest(db, version)
    if latest is None:
        return None
    delta_file = AnnIndex._delta_file(db, latest)
    if delta_file.is_file():
        found = _read_delta(delta_file)
        if found is None or not AnnIndex._file(db, found[0].base).is_file():
            return None
        return latest, found[0]
    return latest, Delta.none(latest)


def _saved_base_ids(db: Path, base: int) -> tuple[np.ndarray, str, int] | None:
    """(sorted ids, kind, nlist) of a saved base, from its ids file; a base written before those
    files existed is read once and gets one."""

    base_file = AnnIndex._file(db, base)
    with contextlib.suppress(Exception):  # missing or damaged: read from the base itself
        kind, nlist = base_file.with_suffix(".kind").read_text().split()
        return np.load(base_file.with_suffix(".ids.npy")), kind, int(nlist)
    ann = AnnIndex._load_base(db, base)
    if ann is None:
        return None
    ids = np.sort(_base_ids(ann._index))
    with contextlib.suppress(OSError):
        _write_base_meta(base_file, ids, ann.kind, ann.nlist)
    return ids, ann.kind, ann.nlist


def current(store: RowSource, retry: bool = False, unwritten: list[Unwritten] | None = None,
            have: AnnIndex | None = None) -> AnnIndex:
    """The search structure for the table's current version: the saved one if it matches, else
    one brought up to date (clipsearch.store.layers) or built from the table, and saved for the next
    search when it can be (clipsearch.store.derived: a failed save is added to `unwritten`, and tried
    again only with `retry` or once the disk has the space it lacked). `have`: a structure this
    process holds already, whose base is reused rather than read again."""
    version, count = store.version, store.count()
    ann = AnnIndex.load(store.path, version, have)
    if ann is not None and ann.size == count:
        return ann
    return _commit(store, retry, unwritten, have, load=True)


def commit(store: RowSource, retry: bool = False, unwritten: list[Unwritten] | None = None,
           fold: bool = False) -> None:
    """Bring the saved search structure up to the table's current version, writing what the
    commit changed (a delta), never reading the base unless the delta is folded into it: when
    due (clipsearch.store.layers), or with `fold`."""
    if fold or not AnnIndex.saved(store.path, store.version):
        _commit(store, retry, unwritten, None, load=False, fold=fold)


def _commit(store: RowSource, retry: bool, unwritten: list[Unwritten] | None, have: AnnIndex | None,
            load: bool, fold: bool = False) -> AnnIndex | None:
    """Bring the saved structure to the table's version: a new delta from the last saved state
    (its base not read), folded into the base when due, or a structure built from the table
    when there is no usable state. With `load`, also return the structure, in memory."""
    version, count = store.version, store.count()
    state = _state(store.path, version)
    base = None if state is None else _saved_base_ids(store.path, state[1].base)
    if base is None or _outgrown(base[1], base[2], count):
        return _rebuilt(store, count, retry, unwritten)
    table_ids = store.sorted_ids()
    delta, new = state[1].advance(base[0], table_ids)
    fold = (fold and delta.size() > 0) or merge_due(len(base[0]), len(delta.added), len(delta.removed))
    previous = AnnIndex.load(store.path, state[0], have) if load or fold else None
    if (load or fold) and previous is None:  # a damaged file
        return _rebuilt(store, count, retry, unwritten)
    vectors = _delta_vectors(store, delta, new, state[0], previous)
    if previous is None:
        _save(lambda: _write_delta(store.path, version, delta, vectors), store, retry, unwritten,
              AnnIndex._delta_file(store.path, version), vectors.nbytes + 8 * delta.size() + 4096)
        return None
    ann = previous.with_delta(delta, vectors, version)
    if fold:
        ann = ann.folded(version, shared=have is not None and previous._index is have._index)
    _save(ann.save_to(store.path), store, retry, unwritten, AnnIndex.files(store.path, version)[-1],
          ann.file_bytes())
    return ann


def _rebuilt(store: RowSource, count: int, retry: bool, unwritten: list[Unwritten] | None) -> AnnIndex:
    ann = _built(store, count)
    ann.table_version = store.version
    _save(ann.save_to(store.path), store, retry, unwritten, AnnIndex._file(store.path, store.version),
          ann.file_bytes())
    return ann


def _delta_vectors(store: RowSource, delta: Delta, new: np.ndarray, held_version: int,
                   previous: AnnIndex | None) -> np.ndarray:
    """The vectors of `delta.added`, in order: those the saved delta had, and the new rows'
    from the table."""
    dim = store.manifest.dim
    out = np.zeros((len(delta.added), dim), np.float32)
    if not len(delta.added):
        return out
    if previous is not None:
        had_ids, had = previous.delta.added, previous._added_vectors()
    else:
        found = _read_delta(AnnIndex._delta_file(store.path, held_version))
        had_ids, had = (found[0].added, found[1]) if found else (np.zeros(0, np.int64), out[:0])
    at = np.searchsorted(delta.added, had_ids)
    kept = (at < len(delta.added))
    kept[kept] = delta.added[at[kept]] == had_ids[kept]
    out[at[kept]] = had[kept]
    if len(new):
        # ids only grow, so the new rows are the table's newest
        for ids, vectors in store.iter_vectors(f"id >= {int(new.min())}"):
            mine = np.isin(ids, new, assume_unique=True)
            out[np.searchsorted(delta.added, ids[mine])] = vectors[mine]
    return out


def _save(write: Callable[[], None], store: RowSource, retry: bool, unwritten: list[Unwritten] | None,
          path: Path, needs: int) -> None:
    """A read-only or full disk still searches, from memory: the file is only a shortcut."""
    from clipsearch.store import derived

    if not derived.may_write(store.path, derived.SEARCH, retry):
        return
    try:
        write()
    except OSError as exc:
        failure = derived.failed(store.path, derived.SEARCH, path, needs, exc)
        if unwritten is not None:
            unwritten.append(failure)
    else:
        derived.succeeded(store.path, derived.SEARCH)


def _built(store: RowSource, count: int) -> AnnIndex:
    sample = None
    if kind_for(count) == "ivf":
        sample = store.sample_vectors(min(count, TRAIN_PER_LIST * nlist_for(count)))
    ann = AnnIndex.empty(count, store.manifest.dim, sample)
    for ids, vectors in store.iter_vectors():
        ann.add(ids, vectors)
    return ann


def range_search(index: faiss.Index, queries: np.ndarray, threshold: float, params=None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, id, score) of every result of `index` at or above `threshold`."""
    lims, scores, found = index.range_search(np.ascontiguousarray(queries, np.float32), threshold,
                                             params=params)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims.astype(np.int64)))
    return rows, found.astype(np.int64), scores
