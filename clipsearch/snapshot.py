"""A read-only copy of the index's rows (and tags) in Arrow IPC files, for a query that must not
import LanceDB (a second of start-up).

The files are named after the table version they mirror, `fast/rows-v<T>.arrow` and
`fast/tags-v<G>.arrow`, and are only read when T and G are the versions LanceDB last committed.
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

from clipsearch import derived
from clipsearch.files import replacing
from clipsearch.store import (
    LABEL_SET_KEY,
    META_COLUMNS,
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
    for kind, table in (("rows", TABLE), ("tags", TAGS_TABLE)):
        version = committed_version(db / f"{table}.lance")
        if version is not None:
            found.append(_file(db, kind, version))
    return found


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


def write(store: Store) -> None:
    """Snapshot the rows (in id order, for lookups by id) and the tags at the store's current
    versions, unless whole files for those versions exist already."""
    rows = _file(store.path, "rows", store.version)
    columns = [*META_COLUMNS, "vector"]
    kept = _read(rows)
    if kept is None or kept.schema.names != columns or kept.num_rows != store.count():
        try:  # streamed: the table is in id order unless rows were rewritten in place
            _write(rows, _batch_schema(store, columns), _in_id_order(store.batches(columns)))
        except _Unsorted:
            table = pa.Table.from_batches(list(store.batches(columns))).sort_by("id")
            _write(rows, table.schema, iter(table.to_batches()))
    tags_version = store.tags_version()
    if tags_version is not None and not _file(store.path, "tags", tags_version).exists():
        table, label_set = store.read_tags()
        table = table.replace_schema_metadata({LABEL_SET_KEY: json.dumps(label_set)})
        _write(_file(store.path, "tags", tags_version), table.schema, iter(table.to_batches()))


def _batch_schema(store: Store, columns: list[str]) -> pa.Schema:
    """The schema the table's batches arrive in (the writer needs it before the first batch)."""
    first = next(store.batches(columns, batch_rows=1), None)
    return first.schema if first is not None else schema(store.manifest.dim)


class Snapshot(RowSource):
    """The rows and tags of one committed version, answering what a search asks of a Store."""

    def __init__(self, path: Path, manifest: Manifest, version: int, rows: pa.Table,
                 tags: pa.Table | None, tags_version: int | None) -> None:
        self.path = path
        self.manifest = manifest
        self.version = version
        self._rows = rows
        self._ids = rows.column("id").to_numpy()
        self._tags = tags
        self._tags_version = tags_version

    @classmethod
    def open(cls, db: Path) -> Snapshot | None:
        """The snapshot of the index at `db` as last committed, or None (none yet, or stale)."""
        db = Path(db)
        version = committed_version(db / f"{TABLE}.lance")
        if version is None or not Store.exists(db):
            return None
        rows = _read(_file(db, "rows", version))
        if rows is None:
            return None
        tags = None
        tags_version = committed_version(db / f"{TAGS_TABLE}.lance")
        if tags_version is not None:
            tags = _read(_file(db, "tags", tags_version))
            if tags is None:
                return None
        ids = rows.column("id")
        manifest = Manifest.load(db, lambda: int(ids[-1].as_py()) if len(ids) else -1)  # rows in id order
        return cls(db, manifest, version, rows, tags, tags_version)

    # -- what a search asks of a Store -------------------------------------------------------
    def refresh(self) -> None:
        """A snapshot is of one version; the next process opens the next one."""

    def count(self) -> int:
        return self._rows.num_rows

    def read(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        if where is not None:
            raise ValueError("a snapshot answers no SQL filters")
        return self._rows.select(list(columns))

    def batches(self, columns: Sequence[str], where: str | None = None, batch_rows: int = 65_536,
                ) -> Iterator[pa.RecordBatch]:
        yield from self.read(columns, where).to_batches(batch_rows)

    def fetch(self, ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
        wanted = np.asarray([i for i in ids if -(2**63) <= i < 2**63], np.int64)
        at = np.searchsorted(self._ids, wanted)
        found = at < len(self._ids)
        found[found] = self._ids[at[found]] == wanted[found]
        table = self._rows.select(list(columns))
        # one-row slices are views into the mapped file; Table.take would first join the chunks
        # of every column (200 MB of vectors at 100k rows)
        rows = [table.slice(int(i), 1) for i in at[found]]
        return pa.concat_tables(rows) if rows else table.slice(0, 0)

    def row(self, path: str, columns: Sequence[str]) -> dict | None:
        return self._first(pc.equal(self._rows.column("path"), path), columns)

    def row_by_hash(self, digest: str, columns: Sequence[str]) -> dict | None:
        return self._first(pc.equal(self._rows.column("hash"), digest), columns)

    def _first(self, mask, columns: Sequence[str]) -> dict | None:
        rows = self._rows.select(list(columns)).filter(mask).slice(0, 1).to_pylist()
        return rows[0] if rows else None

    def tags_version(self) -> int | None:
        return self._tags_version

    def read_tags(self, rows: bool = True) -> tuple[pa.Table | None, dict] | None:
        if self._tags is None:
            return None
        label_set = json.loads((self._tags.schema.metadata or {}).get(LABEL_SET_KEY.encode(), b"{}"))
        return (self._tags if rows else None), label_set


def _read(path: Path) -> pa.Table | None:
    """The table in an IPC file, memory-mapped; None when missing or unreadable."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
