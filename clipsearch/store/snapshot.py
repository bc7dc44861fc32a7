"""A read-only copy of the index's rows (and tags) in Arrow IPC files, for a query that must not
import LanceDB (a second of start-up).

The files are named after the table version they mirror, and are only read when it is the version
LanceDB last committed: `fast/tags-v<G>.arrow`, and for the rows either a base written whole,
`fast/rows-v<T>.arrow`, or a delta `fast/delta-v<T>.arrow` over an older base (the rows added since
it, and in its metadata the ids of its rows removed since; clipsearch.store.layers), so that a commit
writes what it changed, not the table.
Those are read off the tables' `_versions` folders, whose file names are Lance's documented
manifest naming schemes: `<version>.manifest` (V1) and `<u64::MAX - version>.manifest`, 20
digits (V2). A name in neither form, or a version with no snapshot yet, means "no snapshot": the
caller searches through LanceDB, which stays the truth. Files are memory-mapped: a search reads
only the pages of the rows it touches.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.files import replacing
from clipsearch.store import derived
from clipsearch.store.layers import Delta, merge_due
from clipsearch.store.table import (
    CAPTIONS_TABLE,
    LABEL_SET_KEY,
    TABLE,
    TAGS_TABLE,
    Manifest,
    RowSource,
    Store,
    schema,
)

FOLDER = "fast"
_U64_MAX = 2**64 - 1


def committed_version(table_dir: Path) -> int | None:
    """The newest version of a Lance table, from its manifest file names; None when the folder is
    missing or names no version in a known scheme."""
    try:
        names = os.listdir(Path(table_dir) / "_versions")
    except OSError:
        return None
    versions = []
    for name in names:
        stem, dot, suffix = name.partition(".")
        if suffix != "manifest" or not stem.isdigit():
            continue  # detached versions, hints, temporary files
        number = int(stem)
        versions.append(_U64_MAX - number if len(stem) == 20 else number)
    return max(versions) if versions else None


def _file(db: Path, kind: str, version: int) -> Path:
    return Path(db) / FOLDER / f"{kind}-v{version}.arrow"


def _write(target: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
    """Write atomically (with its checksum), then drop the files of older versions of the same
    kind."""
    target.parent.mkdir(exist_ok=True)
    with replacing(target) as tmp, open(tmp, "wb") as f:
        written = derived.Hashing(f)
        with pa.PythonFile(written, mode="w") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    derived.record_sum(target, written)
    kind, version = target.name.split("-v")[0], int(target.stem.split("-v")[1])
    for old in target.parent.glob(f"{kind}-v*.arrow"):
        with contextlib.suppress(ValueError, OSError):
            if int(old.stem.split("-v")[1]) < version:
                derived.remove(old)


def files(db: Path) -> list[Path]:
    """The snapshot files of the index's last committed versions (those a search would read)."""
    db = Path(db)
    found = []
    version = committed_version(db / f"{TABLE}.lance")
    if version is not None:
        delta = _file(db, "delta", version)
        if delta.is_file():  # one that cannot be read is there all the same: damaged, not missing
            base = _delta_of(_read(delta))
            found += [_file(db, "rows", base.base), delta] if base is not None else [delta]
        else:
            found.append(_file(db, "rows", version))
    for kind, table in (("tags", TAGS_TABLE), ("captions", CAPTIONS_TABLE)):
        version = committed_version(db / f"{table}.lance")
        if version is not None:
            found.append(_file(db, kind, version))
    return found


_BASE_KEY, _REMOVED_KEY = b"clipsearch.base", b"clipsearch.removed"


def _delta_of(table: pa.Table | None) -> Delta | None:
    """The base version, added and removed ids a delta file holds; None for no delta file."""
    meta = (table.schema.metadata or {}) if table is not None else {}
    if _BASE_KEY not in meta:
        return None
    removed = np.frombuffer(meta[_REMOVED_KEY], np.int64) if meta.get(_REMOVED_KEY) else np.zeros(0, np.int64)
    return Delta(int(meta[_BASE_KEY]), table.column("id").to_numpy(), removed.copy())


def size_estimate(store: Store) -> int:
    return store.count() * (4 * store.manifest.dim + 256) + 65_536


class _Unsorted(Exception):
    pass


def _in_id_order(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    last = None
    for batch in batches:
        ids = batch.column("id").to_numpy()
        if (last is not None and ids[0] <= last) or np.any(ids[1:] <= ids[:-1]):
            raise _Unsorted
        last = ids[-1]
        yield batch


def write(store: Store, whole: bool = False) -> None:
    """Snapshot the rows (in id order, for lookups by id) and the tags at the store's current
    versions, unless the files for those versions exist already: a delta over the newest base
    when there is one and it is not due to be folded in (nor `whole` asked for), else a base."""
    columns = [*store.meta_columns, "vector"]
    if whole and not _file(store.path, "rows", store.version).is_file() or not _rows_current(store):
        held = None if whole else _held(store.path, store.version)
        if held is None or not _write_delta(store, held, columns):
            _write_base(store, columns)
    tags_version = store.tags_version()
    if tags_version is not None and not _file(store.path, "tags", tags_version).exists():
        table, label_set = store.read_tags()
        table = table.replace_schema_metadata({LABEL_SET_KEY: json.dumps(label_set)})
        _write(_file(store.path, "tags", tags_version), table.schema, iter(table.to_batches()))
    captions_version = store.captions_version()
    if captions_version is not None and not _file(store.path, "captions", captions_version).exists():
        table = store.read_captions()
        _write(_file(store.path, "captions", captions_version), table.schema, iter(table.to_batches()))


def _rows_current(store: Store) -> bool:
    found = _open_rows(store.path, store.version)
    return found is not None and found[0].schema.names == [*store.meta_columns, "vector"] \
        and int(found[1].sum()) == store.count()


def _write_base(store: Store, columns: list[str]) -> None:
    rows = _file(store.path, "rows", store.version)
    try:  # streamed: the table is in id order unless rows were rewritten in place
        _write(rows, _batch_schema(store, columns), _in_id_order(store.batches(columns)))
    except _Unsorted:
        table = pa.Table.from_batches(list(store.batches(columns))).sort_by("id")
        _write(rows, table.schema, iter(table.to_batches()))
    _drop(store.path, "delta", store.version + 1)


def _held(db: Path, version: int) -> tuple[pa.Table, Delta, pa.Table | None] | None:
    """The newest rows snapshot up to `version`: (its base's rows, its delta, the delta's rows)."""
    versions = {}
    with contextlib.suppress(OSError):
        for path in (Path(db) / FOLDER).iterdir():
            kind, _, rest = path.name.partition("-v")
            number = rest.removesuffix(".arrow")
            if kind in ("rows", "delta") and rest.endswith(".arrow") and number.isdigit() \
                    and int(number) <= version:
                versions.setdefault(int(number), kind)
    for held in sorted(versions, reverse=True):
        if versions[held] == "rows" or not _file(db, "delta", held).is_file():
            base = _read(_file(db, "rows", held))
            if base is not None:
                return base, Delta.none(held), None
            continue
        rows = _read(_file(db, "delta", held))
        delta = _delta_of(rows)
        base = _read(_file(db, "rows", delta.base)) if delta is not None else None
        if base is not None:
            return base, delta, rows
    return None


def _write_delta(store: Store, held: tuple[pa.Table, Delta, pa.Table | None], columns: list[str]) -> bool:
    """Write the delta that brings `held` to the store's version; False when the base is due to
    be written whole instead (the delta would be too large, or the columns changed)."""
    base, old, old_rows = held
    if base.schema.names != columns or old.base == store.version:  # a base of this version is stale
        return False
    base_ids = base.column("id").to_numpy()
    delta, new = old.advance(base_ids, store.sorted_ids())
    if merge_due(len(base_ids), len(delta.added), len(delta.removed)):
        return False
    parts = []
    if old_rows is not None and old_rows.num_rows:
        kept = np.isin(old_rows.column("id").to_numpy(), delta.added, assume_unique=True)
        parts.append(old_rows.filter(pa.array(kept)).select(columns))
    if len(new):  # ids only grow: the new rows are the table's newest
        table = store.read(columns, f"id >= {int(new.min())}")
        parts.append(table.filter(pc.is_in(table.column("id"), value_set=pa.array(new))))
    schema_ = base.schema.with_metadata({_BASE_KEY: str(old.base).encode(),
                                         _REMOVED_KEY: delta.removed.astype(np.int64).tobytes()})
    rows = pa.concat_tables([p.cast(base.schema) for p in parts]) if parts else base.slice(0, 0)
    rows = rows.sort_by("id").replace_schema_metadata(schema_.metadata)
    _write(_file(store.path, "delta", store.version), rows.schema, iter(rows.combine_chunks().to_batches()))
    _drop(store.path, "rows", old.base)
    return True


def _drop(db: Path, kind: str, below: int) -> None:
    for old in (Path(db) / FOLDER).glob(f"{kind}-v*.arrow"):
        with contextlib.suppress(ValueError, OSError):
            if int(old.stem.split("-v")[1]) < below:
                derived.remove(old)


def _batch_schema(store: Store, columns: list[str]) -> pa.Schema:
    """The schema the table's batches arrive in (the writer needs it before the first batch)."""
    first = next(store.batches(columns, batch_rows=1), None)
    return first.schema if first is not None else schema(store.manifest.dim)


class Snapshot(RowSource):
    """The rows and tags of one committed version, answering what a search asks of a Store."""

    def __init__(self, path: Path, manifest: Manifest, version: int, rows: pa.Table, alive: np.ndarray,
                 tags: pa.Table | None, tags_version: int | None,
                 captions: tuple[int, pa.Table] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self._version = version
        self._rows = rows  # a base's rows and its delta's, in id order; those removed since stay
        self._alive_rows = None if alive.all() else alive  # which rows are not removed, numpy ...
        self._alive = None if self._alive_rows is None else pa.array(alive)  # ... and as a mask
        self._count = int(alive.sum())
        self._ids = rows.column("id").to_numpy()
        self._tags = tags
        self._tags_version = tags_version
        self._captions = captions

    @classmethod
    def open(cls, db: Path) -> Snapshot | None:
        """The snapshot of the index at `db` as last committed, or None (none yet, or stale)."""
        db = Path(db)
        version = committed_version(db / f"{TABLE}.lance")
        if version is None or not Store.exists(db):
            return None
        found = _open_rows(db, version)
        if found is None:
            return None
        rows, alive = found
        tags, captions = _side(db, "tags", TAGS_TABLE), _side(db, "captions", CAPTIONS_TABLE)
        if tags is False or captions is False:
            return None
        tags_version, tags = tags or (None, None)
        ids = rows.column("id")
        manifest = Manifest.load(db, lambda: int(ids[-1].as_py()) if len(ids) else -1)  # rows in id order
        return cls(db, manifest, version, rows, alive, tags, tags_version, captions)

    # -- what a search asks of a Store -------------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    def refresh(self) -> None:
        """A snapshot is of one version; the next process opens the next one."""

    def count(self) -> int:
        return self._count

    @property
    def names(self) -> list[str]:
        return self._rows.schema.names

    def read(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        if where is not None:
            raise ValueError("a snapshot answers no SQL filters")
        table = self._rows.select(list(columns))
        return table if self._alive is None else table.filter(self._alive)

    def batches(self, columns: Sequence[str], where: str | None = None, batch_rows: int = 65_536,
                ) -> Iterator[pa.RecordBatch]:
        yield from self.read(columns, where).to_batches(batch_rows)

    def fetch(self, ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
        wanted = np.asarray([i for i in ids if -(2**63) <= i < 2**63], np.int64)
        at = np.searchsorted(self._ids, wanted)
        found = at < len(self._ids)
        found[found] = self._ids[at[found]] == wanted[found]
        if self._alive is not None:
            found[found] = self._alive_rows[at[found]]
        table = self._rows.select(list(columns))
        # one-row slices are views into the mapped file; Table.take would first join the chunks
        # of every column (200 MB of vectors at 100k rows)
        rows = [table.slice(int(i), 1) for i in at[found]]
        return pa.concat_tables(rows) if rows else table.slice(0, 0)

    def row(self, path: str, columns: Sequence[str]) -> dict | None:
        return self._first(pc.equal(self._rows.column("path"), path), columns)

    def by_paths(self, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
        mask = pc.is_in(self._rows.column("path"), value_set=pa.array(list(paths), pa.string()))
        if self._alive is not None:
            mask = pc.and_(mask, self._alive)
        return self._rows.select(list(columns)).filter(mask)

    def row_by_hash(self, digest: str, columns: Sequence[str]) -> dict | None:
        return self._first(pc.equal(self._rows.column("hash"), digest), columns)

    def _first(self, mask, columns: Sequence[str]) -> dict | None:
        if self._alive is not None:
            mask = pc.and_(mask, self._alive)
        rows = self._rows.select(list(columns)).filter(mask).slice(0, 1).to_pylist()
        return rows[0] if rows else None

    def tags_version(self) -> int | None:
        return self._tags_version

    def captions_version(self) -> int | None:
        return None if self._captions is None else self._captions[0]

    def read_captions(self) -> pa.Table | None:
        return None if self._captions is None else self._captions[1]

    def read_tags(self, rows: bool = True) -> tuple[pa.Table | None, dict] | None:
        if self._tags is None:
            return None
        label_set = json.loads((self._tags.schema.metadata or {}).get(LABEL_SET_KEY.encode(), b"{}"))
        return (self._tags if rows else None), label_set


def _side(db: Path, kind: str, table: str) -> tuple[int, pa.Table] | None | bool:
    """(version, rows) of the snapshot of a table beside the rows (tags, captions) as last
    committed; None when there is no such table; False when its snapshot is missing."""
    version = committed_version(db / f"{table}.lance")
    if version is None:
        return None
    rows = _read(_file(db, kind, version))
    return False if rows is None else (version, rows)


def _open_rows(db: Path, version: int) -> tuple[pa.Table, np.ndarray] | None:
    """The rows of `version` (a base, or a base and its delta, in id order) and which of them are
    not removed; None when there is no whole snapshot of that version."""
    base = _read(_file(db, "rows", version))
    if base is not None:
        return base, np.ones(base.num_rows, bool)
    delta_rows = _read(_file(db, "delta", version))
    delta = _delta_of(delta_rows)
    base = _read(_file(db, "rows", delta.base)) if delta is not None else None
    if base is None or base.schema.names != delta_rows.schema.names:
        return None
    alive = ~np.isin(base.column("id").to_numpy(), delta.removed)
    rows = pa.concat_tables([base, delta_rows.replace_schema_metadata(base.schema.metadata)])
    return rows, np.concatenate([alive, np.ones(delta_rows.num_rows, bool)])


def _read(path: Path) -> pa.Table | None:
    """The table in an IPC file, memory-mapped; None when missing or unreadable."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
