"""The durable index: a LanceDB table of images with their vectors, plus a JSON manifest.

The table is the truth; everything else (the FAISS index) is derived from it and may be lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from clipsearch.errors import (
    CorruptIndexError,
    IndexBusyError,
    IndexNotFoundError,
    IndexWriteError,
    SchemaVersionError,
)
from clipsearch.files import LockHeld, holding, replacing

log = logging.getLogger("clipsearch")
SCHEMA_VERSION = 2  # 2: the word columns (clipsearch.media.words); an index at 1 is upgraded by `index`
# how the `place` column names a position (clipsearch.media.places.shown): 1 is city, region, country;
# before it a city's quarter could stand where a region had none. `index` re-names older rows
PLACES_VERSION = 1
TABLE = "images"
MANIFEST = "manifest.json"
# A second copy of the manifest, written by the same atomic rule right after it: a manifest lost
# to a bad disk or a hand edit is restored from it instead of costing a re-index.
MANIFEST_COPY = "manifest.copy.json"
LOCK = ".lock"
_IN_CHUNK = 512
# From this many rows, lookups by id (every search's result rows) and by path (similar, deletes)
# go through B-tree indexes instead of scanning: at 1M rows a search's row lookup took 20 ms.
INDEXED_LOOKUPS_FROM = 50_000
LOOKUP_COLUMNS = ("id", "path", "hash")
# Compaction thresholds (Store.compaction_due), chosen by benchmarks/change.py: each small file
# adds about 0.3 ms to every search (the rows' lookup scans the files no index covers yet), so
# 16 of them keep a search within 1.7x of a merged table's, while a merge below 1M rows
# rewrites the table (14-20 s and 2.2-2.7 GB at 1M rows here)
SMALL_FILES_MAX = 16
DELETED_SHARE_MAX = 0.1
VERSIONS_MAX = 256
# Old table versions are kept this long after compaction so that a search running alongside an
# index run never finds the files of the version it is reading deleted under it.
_KEEP_OLD_VERSIONS = timedelta(minutes=10)


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("hash", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("taken", pa.string()),  # EXIF capture time, ISO 8601, as the camera wrote it
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        *WORD_FIELDS,
        *VIDEO_FIELDS,
        *PAIR_FIELDS,
    ])


META_COLUMNS = ["id", "path", "size", "mtime_ns", "hash", "width", "height", "taken"]
# What a photo says beyond its pixels (clipsearch.media.words), after the vector: an index from before
# them gets them appended, all null, then filled (build.fill_words)
WORD_FIELDS = [
    pa.field("camera", pa.string()),  # EXIF make and model
    pa.field("lens", pa.string()),
    pa.field("place", pa.string()),  # the place names the gallery shows: city, region, country
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
    pa.field("keywords", pa.list_(pa.string())),  # the user's keywords, titles, descriptions
    pa.field("people", pa.list_(pa.string())),  # names in face regions
    pa.field("words", pa.list_(pa.string())),  # tokens + SEP + field code (clipsearch.media.words)
    pa.field("sidecar_ns", pa.int64()),  # the XMP sidecars' newest mtime when read; 0: none
]
WORD_COLUMNS = [f.name for f in WORD_FIELDS]
# A video is a row per sampled frame (clipsearch.media.video): the video's path, size, hash and
# creation time (`taken`), the frame's time; photos have both null. Appended to an older index,
# all null, by its next `index`
VIDEO_FIELDS = [
    pa.field("t", pa.float64()),  # seconds into the video
    pa.field("duration", pa.float64()),  # the video's, in seconds
]
VIDEO_COLUMNS = [f.name for f in VIDEO_FIELDS]
# A still's partner files (a Live Photo's video, a RAW + JPEG pair's RAW) as they were when it
# was indexed (clipsearch.media.scan.pair_stamp): the server hands a partner out only while it is that
# file. Null in an index from before it, until its next `index`
PAIR_FIELDS = [pa.field("pairs", pa.string())]
PAIR_COLUMNS = [f.name for f in PAIR_FIELDS]


TAGS_TABLE = "tags"
TAGS_SCHEMA = pa.schema([
    pa.field("hash", pa.string()),  # tags follow content: a moved or copied photo keeps them
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
])
LABEL_SET_KEY = "clipsearch.label_set"

CAPTIONS_TABLE = "captions"
CAPTIONS_SCHEMA = pa.schema([
    pa.field("hash", pa.string()),  # captions follow content, as tags do
    pa.field("caption", pa.string()),
    pa.field("model", pa.string()),  # the captioning model's name, as the user gave it
    pa.field("identity", pa.string()),  # its weights and precision (clipsearch.models.blip)
    pa.field("precision", pa.string()),
])


@dataclass
class Manifest:
    model: dict
    dim: int
    weights_stat: list[int] | None = None
    roots: list[str] = field(default_factory=list)
    # row ids are never reused (the search structure is updated by id): the next one to hand out
    next_id: int = 0
    # `tag --write-xmp` was asked for: index runs write the sidecars of the photos they add
    xmp_sidecars: bool = False
    # each root's device when last seen, and since when a root counts as offline (clipsearch.build.roots)
    root_devices: dict[str, int] = field(default_factory=dict)
    offline: dict[str, str] = field(default_factory=dict)
    # folders below a root on a drive of their own when last scanned -> its device: unmounted,
    # one is an empty folder, and its rows are kept as an offline root's (clipsearch.build.roots.away)
    mounts: dict[str, int] = field(default_factory=dict)
    # --exclude patterns given to `index`: every later run and a watching server leave them out
    exclude: list[str] = field(default_factory=list)
    # the table version the stored tags are in step with, when a commit amended them (a `tag`
    # run records its own in the label set)
    tags_version: int = -1
    schema_version: int = SCHEMA_VERSION
    places_version: int = PLACES_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @classmethod
    def load(cls, db: Path, highest_id: Callable[[], int] | None = None) -> Manifest:
        """The manifest of the index at `db`. A damaged or missing manifest.json is restored from
        its copy (noted once, on the `clipsearch` logger); `highest_id()` then gives the largest
        row id stored, since the copy may be one write behind and ids are never handed out twice."""
        db = Path(db)
        try:
            return cls.read(db / MANIFEST)
        except CorruptIndexError as damaged:
            try:
                manifest = cls.read(db / MANIFEST_COPY)
            except CorruptIndexError:
                raise damaged from None
        if highest_id is not None:
            manifest.next_id = max(manifest.next_id, highest_id() + 1)
        try:
            manifest.write(db / MANIFEST, copy=False)
            done = f"restored it from its copy {MANIFEST_COPY}"
        except OSError:
            done = f"read its copy {MANIFEST_COPY} instead (the folder cannot be written to restore it)"
        log.warning(f"note: the index manifest {db / MANIFEST} was damaged or missing; {done}")
        return manifest

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            version = int(data.get("schema_version", 0))
        except (OSError, ValueError, AttributeError) as exc:
            raise CorruptIndexError(
                f"index manifest {path} is unreadable ({exc}); delete the index folder and re-index"
            ) from None
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the index at {path.parent} was written by a newer clipsearch (schema {version}, "
                f"this one reads {SCHEMA_VERSION}); upgrade clipsearch: pip install -U clipsearch"
            )
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("places_version", 0)  # a manifest from before it: places named the old way
        try:
            return cls(**known)
        except TypeError as exc:
            raise CorruptIndexError(f"index manifest {path} is incomplete ({exc}); re-index") from None

    def write(self, path: Path, copy: bool = True) -> None:
        """Replace the manifest at `path` durably, then its copy beside it (so that at any moment
        at least one of the two is whole)."""
        data = json.dumps(asdict(self), indent=2).encode()
        for target in (path, path.with_name(MANIFEST_COPY)) if copy else (path,):
            with replacing(target, durable=True) as tmp, open(tmp, "wb") as f:
                f.write(data)


# errno values a full, read-only or forbidden index folder raises, and what to tell the user;
# LanceDB reports them inside its own error text as "(os error N)".
_WRITE_FAULTS = {
    errno.ENOSPC: "the disk is full (no space left on device); free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EROFS: "it is on a read-only file system; index into a writable --db",
    errno.EACCES: "permission denied; make the folder writable, or index into another --db",
    errno.EPERM: "operation not permitted; make the folder writable, or index into another --db",
}
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # of those, what more free space mends


def os_errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    for number in _WRITE_FAULTS:
        if f"(os error {number})" in text:
            return number
    return None


def describe_write_fault(exc: BaseException) -> str:
    """What went wrong with a write, and what to do, in words; raises `exc` again when it is not
    a write fault."""
    number = os_errno(exc)
    if number in _WRITE_FAULTS:
        return _WRITE_FAULTS[number]
    if isinstance(exc, OSError) or "LanceError(IO)" in str(exc):
        return f"I/O error ({str(exc).splitlines()[0][:200]}); check the disk"
    if "No space left on device" in str(exc):
        return _WRITE_FAULTS[28]
    raise exc


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write under `path` into IndexWriteError saying why and what to do.

    Every write is one atomic commit, so whatever failed left the last committed state intact.
    """
    try:
        yield
    except IndexWriteError:
        raise
    except (OSError, RuntimeError) as exc:
        fix = describe_write_fault(exc)
        raise IndexWriteError(
            f"cannot write to the index at {path}: {fix}; everything committed before is intact, "
            "so run the same command again afterwards"
        ) from None


def sql_list(values: Sequence) -> str:
    if values and isinstance(values[0], str):
        return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return ", ".join(str(int(v)) for v in values)


def under_sql(paths: Sequence[str]) -> str:
    """A filter for the rows of these paths: each path itself, and what is under it."""
    if not paths:
        return "false"
    prefixes = [sql_list([p.rstrip(os.sep) + os.sep]) for p in paths]
    return " OR ".join([f"path IN ({sql_list(paths)})", *(f"starts_with(path, {p})" for p in prefixes)])


class RowSource(Protocol):
    """What the query side (clipsearch.search) reads of an index's rows. The LanceDB table
    (Store) is the truth; a read-only snapshot of one committed version of it
    (clipsearch.store.snapshot.Snapshot) answers the same calls without LanceDB. Both subclass
    this protocol, taking the methods it implements from what the others give."""

    path: Path
    manifest: Manifest

    @property
    def version(self) -> int:
        """The committed version the rows are of."""
        ...

    def refresh(self) -> None:
        """Move to the newest committed version (a snapshot stays on its own)."""
        ...

    def count(self) -> int:
        ...

    @property
    def names(self) -> list[str]:
        """The columns the rows have."""
        ...

    def read(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        ...

    def batches(self, columns: Sequence[str], where: str | None = None, batch_rows: int = 16_384,
                ) -> Iterator[pa.RecordBatch]:
        ...

    def fetch(self, ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """The rows of these ids (in no particular order)."""
        ...

    def row(self, path: str, columns: Sequence[str]) -> dict | None:
        ...

    def row_by_hash(self, digest: str, columns: Sequence[str]) -> dict | None:
        ...

    def tags_version(self) -> int | None:
        ...

    def read_tags(self, rows: bool = True) -> tuple[pa.Table | None, dict] | None:
        ...

    @property
    def has_words(self) -> bool:
        return "words" in self.names

    @property
    def has_video(self) -> bool:
        return "t" in self.names

    @property
    def has_pairs(self) -> bool:
        return "pairs" in self.names

    def by_paths(self, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """The rows stored for these paths (in no particular order)."""
        ...

    def by_name(self, name: str, columns: Sequence[str]) -> pa.Table:
        """The rows of every indexed file called `name` (a bare file name, IMG_2041.jpg; case
        does not matter), wherever it is: what `info`, `caption` and `forget` take besides a path."""
        import pyarrow.compute as pc

        wanted = list(dict.fromkeys([*columns, "path"]))
        rows = pa.Table.from_batches(list(self.batches(wanted)),
                                     schema=pa.schema([schema(self.manifest.dim).field(c) for c in wanted]))
        names = pc.utf8_lower(pc.replace_substring_regex(rows.column("path"), r"^.*/", ""))
        # lowered as utf8_lower lowers the stored names (casefold would turn Straße into strasse)
        wanted_name = pa.scalar(os.path.basename(name).lower())
        return rows.filter(pc.equal(names, wanted_name)).select(list(columns))

    def captions_version(self) -> int | None:
        return None

    def read_captions(self) -> pa.Table | None:
        """The stored captions (CAPTIONS_SCHEMA), or None before the first `caption` run."""
        return None

    @property
    def meta_columns(self) -> list[str]:
        """What a search returns of a row: META_COLUMNS and the word columns where the rows
        have them (an index from before them is searched as it was until `index` fills them)."""
        return META_COLUMNS + (WORD_COLUMNS if self.has_words else []) + (
            VIDEO_COLUMNS if self.has_video else []) + (PAIR_COLUMNS if self.has_pairs else [])

    def vectors(self, columns: Sequence[str] = ("id",)) -> tuple[pa.Table, np.ndarray]:
        """`columns` of every row, and the rows' vectors as one (n, dim) float32 matrix."""
        wanted = [*columns, "vector"]
        full = schema(self.manifest.dim)
        table = pa.Table.from_batches(list(self.batches(wanted)),
                                      schema=pa.schema([full.field(c) for c in wanted]))
        return table.drop_columns(["vector"]), self.matrix(table.column("vector"))

    def iter_vectors(self, where: str | None = None, batch_rows: int = 16_384,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, (n, dim) float32 vectors) in batches, so a large table never sits in memory whole."""
        for batch in self.batches(["id", "vector"], where, batch_rows):
            yield batch.column("id").to_numpy(), self.matrix(batch.column("vector"))

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` vectors drawn uniformly from the table (to train a search structure on)."""
        total = self.count()
        rng = np.random.default_rng(seed)
        chosen = np.zeros(total, bool)
        chosen[rng.choice(total, min(n, total), replace=False)] = True
        parts, start = [], 0
        for ids, vectors in self.iter_vectors():
            parts.append(vectors[chosen[start:start + len(ids)]])
            start += len(ids)
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest.dim), np.float32)

    def matrix(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.reshape(len(column), self.manifest.dim), np.float32)

    def sorted_ids(self) -> np.ndarray:
        """Every row id, sorted (what the derived structures are compared with)."""
        return np.sort(self.read(["id"]).column("id").to_numpy())

    def disk_bytes(self) -> int:
        """What the index's folder holds on disk."""
        total = 0
        for folder, _, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(folder, name)).st_size
        return total


class Store(RowSource):
    """One index directory: the LanceDB table, the manifest, and the writer's lock."""

    def __init__(self, path: Path, manifest: Manifest, table) -> None:
        self.path = path
        self.manifest = manifest
        self._table = table
        # the last tags read, by table version: a long-lived reader (the server) reads them once
        self._tags: tuple[int, pa.Table, dict] | None = None
        self._captions: tuple[int, pa.Table] | None = None
        # the captions table, opened once per refresh (False: there is none): every search asks
        # for it, and opening a LanceDB table costs about a millisecond
        self._captions_handle = None
        self._manifest_stamp: int | None = None
        self._ids: tuple[int, np.ndarray] | None = None  # the sorted ids of one table version

    @property
    def names(self) -> list[str]:
        return self._table.schema.names

    @staticmethod
    def exists(path: Path) -> bool:
        return any((Path(path) / name).is_file() for name in (MANIFEST, MANIFEST_COPY))

    @classmethod
    def open(cls, path: Path) -> Store:
        path = Path(path)
        if not cls.exists(path):
            raise IndexNotFoundError(
                f"no index at {path}; build one first with: clipsearch index FOLDER "
                "(and the same --db, if you gave one)"
            )
        import lancedb

        try:
            table = lancedb.connect(path).open_table(TABLE)
        except Exception as exc:
            Manifest.load(path)  # a damaged manifest is the first thing to say
            raise CorruptIndexError(
                f"the image table in {path} cannot be opened ({str(exc).splitlines()[0][:200]}); "
                f"move {path} aside and re-index"
            ) from None
        store = cls(path, None, table)  # type: ignore[arg-type]
        store.manifest = Manifest.load(path, store.highest_id)
        return store

    def highest_id(self) -> int:
        """The largest row id stored (-1 for none)."""
        ids = self.sorted_ids()
        return int(ids[-1]) if len(ids) else -1

    @classmethod
    def create(cls, path: Path, manifest: Manifest) -> Store:
        path = Path(path)
        import lancedb

        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
            db = lancedb.connect(path)
            table = db.create_table(TABLE, schema=schema(manifest.dim), exist_ok=True)
            # The manifest goes last: a directory without one is not yet an index.
            manifest.write(path / MANIFEST)
        return cls(path, manifest, table)

    def save_manifest(self) -> None:
        with writing(self.path):
            self.manifest.write(self.path / MANIFEST)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive right to write; a second writer is refused at once instead of corrupting."""
        with lock_dir(self.path):
            yield

    @property
    def version(self) -> int:
        return self._table.version

    def refresh(self) -> None:
        """Move to the newest committed version; the manifest too, if another process rewrote it
        (an index run adds folders)."""
        self._table.checkout_latest()
        self._captions_handle = None
        with contextlib.suppress(OSError):
            stamp = (self.path / MANIFEST).stat().st_mtime_ns
            if stamp != self._manifest_stamp:
                self.manifest, self._manifest_stamp = Manifest.load(self.path, self.highest_id), stamp

    def count(self) -> int:
        return self._table.count_rows()

    def read(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        query = self._table.search().select(list(columns)).limit(None)
        if where:
            query = query.where(where)
        try:
            if "vector" in columns:
                return query.to_arrow()
            # narrow columns in large batches: LanceDB's default of 1,024 rows a batch made reading
            # a million ids take 0.23 s, against 0.01 s (vectors are read faster the default way)
            return query.to_batches(1 << 20).read_all()
        except (OSError, RuntimeError) as exc:
            raise self._damaged(exc) from None

    def sorted_ids(self) -> np.ndarray:
        """Every row id, sorted: what a commit compares the derived structures with (read once
        per table version, however many structures follow it)."""
        version = self.version
        if self._ids is None or self._ids[0] != version:
            self._ids = (version, np.sort(self.read(["id"]).column("id").to_numpy()))
        return self._ids[1]

    def _damaged(self, exc: Exception) -> CorruptIndexError:
        """The table opened, but reading it failed: its data files are missing or damaged."""
        return CorruptIndexError(
            f"the image table in {self.path} is damaged ({str(exc).splitlines()[0][:200]}); "
            f"move {self.path} aside and index your folders again (your photos are untouched)"
        )

    def fetch(self, ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """Rows with the given ids (in no particular order); ids no int64 holds match nothing."""
        return self._where_in("id", [i for i in ids if -(2**63) <= i < 2**63], columns)

    def by_paths(self, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """The rows stored for these paths (in no particular order)."""
        return self._where_in("path", list(paths), columns)

    def by_hashes(self, hashes: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """The rows holding these contents (copies: several a hash)."""
        return self._where_in("hash", list(hashes), columns)

    def _where_in(self, column: str, values: list, columns: Sequence[str]) -> pa.Table:
        """The rows whose `column` is one of `values`, asked in chunks (a long IN list is slow)."""
        parts = [self.read(columns, f"{column} IN ({sql_list(values[i:i + _IN_CHUNK])})")
                 for i in range(0, len(values), _IN_CHUNK)]
        return pa.concat_tables(parts) if parts else self.read(columns, "false")

    def row(self, path: str, columns: Sequence[str]) -> dict | None:
        """The row stored for `path`, or None."""
        rows = self.read(columns, f"path = {sql_list([path])}").to_pylist()
        return rows[0] if rows else None

    def holds_under(self, folder: str) -> bool:
        """Whether any row is under `folder`."""
        return self._table.search().where(under_sql([folder])).select(["id"]).limit(1).to_arrow().num_rows > 0

    def row_by_hash(self, digest: str, columns: Sequence[str]) -> dict | None:
        """A row holding content with this hash (copies share their vector), or None."""
        rows = self.read(columns, f"hash = {sql_list([digest])}").to_pylist()
        return rows[0] if rows else None

    def batches(self, columns: Sequence[str], where: str | None = None, batch_rows: int = 16_384,
                ) -> Iterator[pa.RecordBatch]:
        """`columns` of the rows (matching `where`) in batches of at most `batch_rows`.

        The whole table is read a range of row ids at a time, in id order (so that a structure
        built from it holds rows in the order a structure updated since held them: the same
        answers to the bit, ties included). LanceDB's scanner
        reads ahead: streaming a million 512-d rows held 700 MB; ranges of 16k rows hold 300 MB
        and take no longer (a range is a B-tree lookup from INDEXED_LOOKUPS_FROM rows on)."""
        if where:
            query = self._table.search().select(list(columns)).where(where)
            try:
                for batch in query.limit(None).to_batches(batch_rows):
                    if batch.num_rows:
                        yield batch
            except (OSError, RuntimeError) as exc:
                raise self._damaged(exc) from None
            return
        ids = np.sort(self.read(["id"]).column("id").to_numpy())
        for start in range(0, len(ids), batch_rows):
            low, high = int(ids[start]), int(ids[min(start + batch_rows, len(ids)) - 1])
            table = self.read(columns, f"id >= {low} AND id <= {high}")
            if "id" in table.column_names:  # rows rewritten in place (a merge) are out of id order
                table = table.sort_by("id")
            for batch in table.combine_chunks().to_batches():
                if batch.num_rows:
                    yield batch
            del table
            pa.default_memory_pool().release_unused()  # freed batches are not kept for reuse

    def set_values(self, column: str, ids_by_value: dict[str | None, list[int]]) -> None:
        """Give the rows of each list of ids that value in `column` (one update per value)."""
        with writing(self.path):
            for value, ids in ids_by_value.items():
                self._table.update(where=f"id IN ({', '.join(map(str, ids))})", values={column: value})

    def add(self, rows: pa.Table) -> None:
        """Append rows for paths the table does not hold yet."""
        with writing(self.path):
            self._table.add(self._conformed(rows))

    def replace(self, rows: pa.Table) -> None:
        """Insert or overwrite rows by path."""
        with writing(self.path):
            (self._table.merge_insert("path").when_matched_update_all()
             .when_not_matched_insert_all().execute(self._conformed(rows)))

    def rewrite(self, rows: pa.Table, paths: Sequence[str]) -> None:
        """Put `rows` (new ids) in place of every row at `paths`, in one commit: a video's frames
        are several rows a path, which a merge by path cannot match one to one."""
        with writing(self.path):
            (self._table.merge_insert("id").when_not_matched_insert_all()
             .when_not_matched_by_source_delete(f"path IN ({sql_list(list(paths))})")
             .execute(self._conformed(rows)))

    def _conformed(self, rows: pa.Table) -> pa.Table:
        """`rows` in the table's column order and types; a column they lack is null."""
        target = self._table.schema
        for f in target:
            if f.name not in rows.column_names:
                rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
        return rows.select(target.names).cast(target)

    def add_word_columns(self) -> None:
        """Append the word, video and pair columns, all null (LanceDB writes no data for it)."""
        missing = [f for f in WORD_FIELDS + VIDEO_FIELDS + PAIR_FIELDS if f.name not in self.names]
        if missing:
            with writing(self.path):
                self._table.add_columns(pa.schema(missing))

    def delete_paths(self, paths: Sequence[str]) -> None:
        paths = list(paths)
        with writing(self.path):
            for i in range(0, len(paths), _IN_CHUNK):
                self._table.delete(f"path IN ({sql_list(paths[i:i + _IN_CHUNK])})")

    def write_tags(self, rows: pa.Table | Iterable[pa.RecordBatch], label_set: dict) -> None:
        """Replace every stored tag at once (one LanceDB commit, so readers see the old set or the
        new one, never a mix); the label set that produced them travels in the same commit.
        `rows` may be batches (of TAGS_SCHEMA's columns) made while they are written."""
        import lancedb

        schema = TAGS_SCHEMA.with_metadata({LABEL_SET_KEY: json.dumps(label_set)})
        mode = "overwrite" if self._tags_table() is not None else "create"  # "overwrite" warns if new
        if isinstance(rows, pa.Table):
            data = rows.cast(schema)
        else:
            data = pa.RecordBatchReader.from_batches(schema, (
                pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in rows))
        with writing(self.path):
            table = lancedb.connect(self.path).create_table(TAGS_TABLE, data, mode=mode)
            # every re-tag is a new version; drop old ones once no search can still be reading them
            table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)

    def amend_tags(self, rows: pa.Table | None, replaced: Sequence[str]) -> None:
        """Drop the tags of the `replaced` hashes and add `rows` (TAGS_SCHEMA), keeping the label
        set: an index commit's new and removed content."""
        table = self._tags_table()
        if table is None:
            return
        with writing(self.path):
            for i in range(0, len(replaced), _IN_CHUNK):
                table.delete(f"hash IN ({sql_list(list(replaced[i:i + _IN_CHUNK]))})")
            if rows is not None and len(rows):
                table.add(rows.cast(table.schema))
            if table.version % 64 == 0:  # each commit of a watcher adds versions: drop old ones now and then
                table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)

    def _tags_table(self):
        return self._side_table(TAGS_TABLE)

    def _unreadable(self, what: str, table: str, exc: BaseException, remake: str) -> CorruptIndexError:
        """The error for a table beside the rows (tags, captions) that LanceDB cannot read."""
        return CorruptIndexError(
            f"the {what} in {self.path / (table + '.lance')} cannot be read "
            f"({str(exc).splitlines()[0][:200]}); delete that folder and run {remake} again")

    def _side_table(self, name: str):
        import lancedb

        try:
            return lancedb.connect(self.path).open_table(name)
        except ValueError:  # lancedb's "table not found"
            return None

    def add_captions(self, rows: pa.Table) -> None:
        """Store these captions (CAPTIONS_SCHEMA), replacing those of the same hashes, in one
        commit of the captions table: a stale caption is there until its new one is."""
        import lancedb

        rows = rows.cast(CAPTIONS_SCHEMA)
        table = self._captions_table()
        with writing(self.path):
            if table is None:
                lancedb.connect(self.path).create_table(CAPTIONS_TABLE, rows)
                self._captions_handle = None
                return
            table.merge_insert("hash").when_matched_update_all().when_not_matched_insert_all().execute(rows)
            if table.version % 64 == 0:  # a caption run commits every few seconds: drop old versions
                table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)

    def forget_captions(self, hashes: Sequence[str]) -> None:
        """Drop the captions of these contents (forgotten: no row holds them any more)."""
        table = self._captions_table()
        if table is None or not hashes:
            return
        with writing(self.path):
            for i in range(0, len(hashes), _IN_CHUNK):
                table.delete(f"hash IN ({sql_list(list(hashes[i:i + _IN_CHUNK]))})")

    def _captions_table(self):
        if self._captions_handle is None:
            self._captions_handle = self._side_table(CAPTIONS_TABLE) or False
        return self._captions_handle or None

    def captions_version(self) -> int | None:
        table = self._captions_table()
        return None if table is None else table.version

    def read_captions(self) -> pa.Table | None:
        """Every stored caption (CAPTIONS_SCHEMA), from one table version; None before the first."""
        table = self._captions_table()
        if table is None:
            return None
        try:
            cached = self._captions
            if cached is not None and cached[0] == table.version:
                return cached[1]
            self._captions = (table.version, table.to_arrow())
            return self._captions[1]
        except Exception as exc:
            raise self._unreadable("captions", CAPTIONS_TABLE, exc, "clipsearch caption") from None

    def tags_version(self) -> int | None:
        """The tags table's version (each `tag` run makes a new one), or None before the first."""
        table = self._tags_table()
        return None if table is None else table.version

    def read_tags(self, rows: bool = True) -> tuple[pa.Table | None, dict] | None:
        """(hash, label, score) rows and the label set of the last `tag` run, from one table
        version; None before the first `tag`. `rows=False` reads the label set alone."""
        table = self._tags_table()
        if table is None:
            return None
        try:
            cached = self._tags
            if cached is not None and cached[0] == table.version:
                return (cached[1] if rows else None), cached[2]
            label_set = json.loads((table.schema.metadata or {}).get(LABEL_SET_KEY.encode(), b"{}"))
            if not rows:
                return None, label_set
            version, arrow = table.version, table.to_arrow()
            self._tags = (version, arrow, label_set)
            return arrow, label_set
        except Exception as exc:
            raise self._unreadable("tags", TAGS_TABLE, exc, "clipsearch tag") from None

    def compaction_due(self) -> bool:
        """Whether merging the table's files pays now: every commit that adds rows leaves a small
        file, and deleted rows stay in their files until the next merge. Merging rewrites every
        file under Lance's target size (1M rows), so below that it costs the table's size, while
        each small file makes every scan open one more: it runs once SMALL_FILES_MAX of them
        piled up, or a tenth of the rows read are deleted ones (Lance's own threshold for
        rewriting a file), or VERSIONS_MAX commits left their old versions (deletions add no
        file; the merge also drops old versions). Lookup indexes are brought up to date then
        (rows committed since are looked up by a scan of their small files)."""
        try:
            stats = self._table.stats()
            fragments = stats["fragment_stats"]
            stored = fragments["lengths"]["mean"] * fragments["num_fragments"]  # deleted rows included
            return (fragments["num_small_fragments"] > SMALL_FILES_MAX
                    or stored - stats["num_rows"] > DELETED_SHARE_MAX * max(stored, 1)
                    or len(os.listdir(self.path / f"{TABLE}.lance" / "_versions")) > VERSIONS_MAX)
        except Exception:  # a LanceDB that describes its tables otherwise: merge, as every run once did
            return True

    def compact(self) -> None:
        """Merge small commits, drop old versions, bring the lookup indexes up to date."""
        with writing(self.path):
            self._table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)
        self.ensure_lookups()

    def ensure_lookups(self) -> None:
        """From INDEXED_LOOKUPS_FROM rows on, B-tree indexes on the columns rows are looked up by:
        id (every search's rows), path (deletes, similar) and hash (a run's known content).
        Made once each (a second or two at a million rows, reading one column)."""
        if self.count() < INDEXED_LOOKUPS_FROM:
            return
        with writing(self.path):
            have = {tuple(i.columns) for i in self._table.list_indices()}
            missing = [c for c in LOOKUP_COLUMNS if (c,) not in have]
            if missing:
                from lancedb.index import BTree

                for column in missing:
                    self._table.create_index(column, config=BTree())



# the index folders whose lock this process holds -> the thread that may take it again, if any
_HELD: dict[str, int | None] = {}


def take_over_lock(path: Path) -> None:
    """Let the calling thread take again the writer's lock this process holds on `path` (a
    watcher's thread, which runs every write of the server that opened the index, jobs
    included). Without this, taking it again is refused like any second writer."""
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key] = threading.get_ident()


@contextlib.contextmanager
def lock_dir(path: Path) -> Iterator[None]:
    """The writer's lock of the index at `path`, held until the block ends; any other writer is
    refused at once, but for the thread the lock was handed to (take_over_lock)."""
    try:
        import fcntl  # noqa: F401 (only where there are advisory locks)
    except ImportError:  # Windows: no advisory locks; a single writer is up to the user there
        yield
        return
    key = os.path.realpath(path)
    if _HELD.get(key) == threading.get_ident():
        yield
        return
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with holding(fd, wait=False):
            _HELD[key] = None
            try:
                yield
            finally:
                _HELD.pop(key, None)
    except LockHeld as held:
        raise IndexBusyError(
            f"another clipsearch process (pid {held.holder}) is writing to the index at {path}; "
            "wait for it to finish, then run this again"
        ) from None
