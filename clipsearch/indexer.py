"""scan -> diff against the store -> hash and decode in workers -> embed in batches -> commit.

A file whose size and mtime match its row is not read at all. Any other file is hashed; a hash
the index already holds (a touched, moved, renamed or copied file) reuses the stored vector, so
only new content is decoded and embedded. Rows are committed in batches (256 rows or 10 seconds,
whichever comes first) and deleted rows go last, so an interrupted run keeps all committed work,
loses at most seconds of it, and the next run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from clipsearch.config import COMMIT_EVERY, COMMIT_SECONDS
from clipsearch.errors import IndexInterrupted, RayWorkerError, UnreadableImageError, WorkerCannotReadError
from clipsearch.images import load_image, prepare_photo, read_file
from clipsearch.results import IndexSummary, Progress, Skipped
from clipsearch.scan import FileEntry, is_under, scan
from clipsearch.store import META_COLUMNS, Store

if TYPE_CHECKING:
    from clipsearch.distributed import Embedded
    from clipsearch.models.base import Embedder

ProgressCallback = Callable[[Progress], None]
# Embeds elsewhere (a Ray cluster): (paths, hashes the index holds) -> each photo as it comes back
Fanout = Callable[[list[str], list[str]], Iterator["Embedded"]]


@dataclass
class _Row:
    """A row's metadata as read from the store (no vector)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None
    height: int | None
    taken: str | None


@dataclass
class _Outcome:
    entry: FileEntry
    hash: str
    source: _Row | None = None  # a row with the same content, whose vector is reused
    pixels: object | None = None  # preprocessed tensor, when the content is new
    width: int | None = None
    height: int | None = None
    taken: str | None = None
    vector: np.ndarray | None = None


class Indexer:
    def __init__(
        self,
        store: Store,
        embedder: Callable[[], Embedder],
        *,
        batch_size: int,
        workers: int,
        progress: ProgressCallback | None = None,
        commit_every: int = COMMIT_EVERY,
        commit_seconds: float = COMMIT_SECONDS,
        fanout: Fanout | None = None,
    ) -> None:
        self.store = store
        self._load_embedder = embedder
        self.batch_size = max(1, batch_size)
        self.workers = max(0, workers)
        self.progress = progress or (lambda _p: None)
        self.commit_every = max(1, commit_every)
        self.commit_seconds = commit_seconds
        self.fanout = fanout
        self._committed_at = time.monotonic()
        self.summary = IndexSummary()
        self._buffer: list[_Outcome] = []
        self._saved = 0
        self._next_id = 0
        self._moved_sources: set[str] = set()
        self._rows: dict[str, _Row] = {}  # the table as it was when the run began, by path
        self._by_hash: dict[str, _Row] = {}  # one row per content hash, for reusing vectors
        self._gone: set[str] = set()  # paths in the table whose files are no longer there
        self._embedder: Embedder | None = None
        self.changed = False  # whether the run wrote anything
        self.written: dict[str, str] = {}  # path -> hash of every row this run added or rewrote

    # -- the run ---------------------------------------------------------------------------
    def run(self, roots: Sequence[str], exclude: Sequence[str] = ()) -> IndexSummary:
        started = time.monotonic()
        found = scan(roots, exclude)
        self.summary.skipped.extend(found.skipped)
        self.progress(Progress("scan", len(found.files), len(found.files)))

        rows = self._existing_rows()
        by_hash = {}
        for row in rows.values():
            by_hash.setdefault(row.hash, row)
        self._next_id = max(max((r.id for r in rows.values()), default=-1) + 1,
                            self.store.manifest.next_id)
        seen = {e.path for e in found.files}
        candidates = []
        for entry in found.files:
            row = rows.get(entry.path)
            if row is not None and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
                self.summary.unchanged += 1
            else:
                candidates.append(entry)
        protected = [s.path for s in found.skipped]
        gone = [p for p in rows if any(is_under(p, r) for r in roots) and p not in seen
                and not any(is_under(p, s) for s in protected)]
        self._rows, self._by_hash, self._gone = rows, by_hash, set(gone)

        try:
            if candidates:
                self._process(candidates)
            self._flush()
        except KeyboardInterrupt:
            self._flush(final=True)
            raise IndexInterrupted(self._saved) from None
        except (WorkerCannotReadError, RayWorkerError):
            self._flush(final=True)
            raise
        if gone:
            self.store.delete_paths(gone)
            self.summary.removed = len(self._gone - self._moved_sources)
        self.summary.seconds = time.monotonic() - started
        self.changed = bool(candidates or gone)
        return self.summary

    def _existing_rows(self) -> dict[str, _Row]:
        table = self.store.read(META_COLUMNS).to_pylist()
        return {r["path"]: _Row(**r) for r in table}

    # -- hashing and decoding, in worker threads ------------------------------------------------
    def _work(self, entry: FileEntry, min_side: int, preprocess) -> _Outcome | Skipped:
        p = prepare_photo(entry.path, self._by_hash.__contains__, min_side, preprocess)
        if p.reason is not None:
            return Skipped(entry.path, p.reason)
        if p.pixels is None:
            return _Outcome(entry, p.hash, source=self._by_hash[p.hash])
        return _Outcome(entry, p.hash, pixels=p.pixels, width=p.width, height=p.height, taken=p.taken)

    def _outcomes(self, entries: list[FileEntry]) -> Iterator[_Outcome | Skipped]:
        # The model loads only when some file needs reading: an unchanged folder never pays for it.
        self._embedder = embedder = self._load_embedder()
        min_side, preprocess = embedder.decode_min_side, embedder.preprocess
        if self.workers == 0:
            for entry in entries:
                yield self._work(entry, min_side, preprocess)
            return
        # Bounded look-ahead: decoding runs ahead of the model by a few batches, never the folder.
        ahead = max(2 * self.batch_size, 4 * self.workers)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clipsearch-decode")
        try:
            it = iter(entries)
            window: deque[Future] = deque(
                pool.submit(self._work, e, min_side, preprocess) for e in islice(it, ahead))
            while window:
                result = window.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    window.append(pool.submit(self._work, nxt, min_side, preprocess))
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- or read, hashed, decoded and embedded on a cluster ------------------------------------
    def _fanned_out(self, entries: list[FileEntry]) -> Iterator[_Outcome | Skipped]:
        by_path = {e.path: e for e in entries}
        for e in self.fanout(list(by_path), list(self._by_hash)):
            entry = by_path.pop(e.path, None)
            if entry is None:  # a second answer for one photo (a retried batch) must not add a row
                continue
            if e.reason is not None:
                if e.unread:
                    _readable_here(e)
                yield Skipped(e.path, e.reason)
            elif e.vector is not None:
                self.summary.embedded += 1
                yield _Outcome(entry, e.hash, width=e.width, height=e.height, taken=e.taken, vector=e.vector)
            elif e.hash in self._by_hash:
                yield _Outcome(entry, e.hash, source=self._by_hash[e.hash])
            else:  # its hash shares its first 64 bits with indexed content: embed it here
                outcome = _Outcome(entry, e.hash)
                self._embed_one(outcome)
                if outcome.vector is not None:
                    yield outcome

    # -- embedding and committing, in the calling thread --------------------------------------
    def _process(self, entries: list[FileEntry]) -> None:
        pending: list[_Outcome] = []
        self.progress(Progress("embed", 0, len(entries)))
        results = self._outcomes(entries) if self.fanout is None else self._fanned_out(entries)
        for done, result in enumerate(results, start=1):
            if isinstance(result, Skipped):
                self.summary.skipped.append(result)
            elif result.pixels is None:
                self._buffer.append(result)
            else:
                pending.append(result)
                if len(pending) >= self.batch_size:
                    self._embed(pending)
                    pending = []
            if len(self._buffer) >= self.commit_every or (
                    self._buffer and time.monotonic() - self._committed_at >= self.commit_seconds):
                self._flush()
            self.progress(Progress("embed", done, len(entries)))
        if pending:
            self._embed(pending)

    def _embed(self, batch: list[_Outcome]) -> None:
        import torch

        vectors = self._embedder.embed_images(torch.stack([o.pixels for o in batch]))
        for outcome, vector in zip(batch, vectors, strict=True):
            outcome.vector, outcome.pixels = vector, None
        self.summary.embedded += len(batch)
        self._buffer.extend(batch)

    def _flush(self, final: bool = False) -> None:
        """Commit the buffered rows: new paths are appended, known paths overwritten."""
        ready = [o for o in self._buffer if o.vector is not None or o.source is not None]
        self._buffer = []
        self._committed_at = time.monotonic()
        if not ready:
            return
        self._fill_reused_vectors(ready, final)
        ready = [o for o in ready if o.vector is not None]
        fresh = [o for o in ready if o.entry.path not in self._rows]
        known = [o for o in ready if o.entry.path in self._rows]
        if fresh:
            self.store.add(self._table(fresh))
        if known:
            self.store.replace(self._table(known))
        for o in ready:
            self._count(o)
            if self._rows.get(o.entry.path) is None or self._rows[o.entry.path].hash != o.hash:
                self.written[o.entry.path] = o.hash
        self._saved += len(ready)

    def _fill_reused_vectors(self, outcomes: list[_Outcome], final: bool) -> None:
        wanted = sorted({o.source.id for o in outcomes if o.vector is None})
        if not wanted:
            return
        table = self.store.fetch(wanted, ["id", "vector"])
        found = dict(zip(table.column("id").to_pylist(),
                         table.column("vector").to_numpy(zero_copy_only=False), strict=True))
        for o in outcomes:
            if o.vector is not None:
                continue
            vector = found.get(o.source.id)
            if vector is not None:
                o.vector = np.asarray(vector, np.float32)
                o.width, o.height, o.taken = o.source.width, o.source.height, o.source.taken
            elif not final:
                # the source row was rewritten earlier in this run (two files swapped names)
                self._embed_one(o)

    def _embed_one(self, o: _Outcome) -> None:
        self._embedder = self._embedder or self._load_embedder()
        try:
            decoded = load_image(o.entry.path, self._embedder.decode_min_side)
        except UnreadableImageError as exc:
            self.summary.skipped.append(Skipped(exc.path, exc.reason))
            return
        o.vector = self._embedder.embed_pil([decoded.image])[0]
        o.width, o.height, o.taken, o.source = decoded.width, decoded.height, decoded.taken, None
        self.summary.embedded += 1

    def _count(self, o: _Outcome) -> None:
        old = self._rows.get(o.entry.path)
        if old is not None:
            if old.hash == o.hash:
                self.summary.unchanged += 1
            else:
                self.summary.updated += 1
        elif o.source is not None and o.source.path in self._gone:
            self.summary.moved += 1
            self._moved_sources.add(o.source.path)
        else:
            self.summary.added += 1

    def _table(self, outcomes: list[_Outcome]) -> pa.Table:
        ids = range(self._next_id, self._next_id + len(outcomes))
        self._next_id += len(outcomes)
        # recorded before the rows are written, so an id is never handed out twice, even after
        # its row was deleted and the run that deleted it was killed
        self.store.manifest.next_id = self._next_id
        self.store.save_manifest()
        dim = len(outcomes[0].vector)
        flat = np.concatenate([o.vector for o in outcomes]).astype(np.float32)
        return pa.table({
            "id": pa.array(ids, pa.int64()),
            "path": [o.entry.path for o in outcomes],
            "size": pa.array([o.entry.size for o in outcomes], pa.int64()),
            "mtime_ns": pa.array([o.entry.mtime_ns for o in outcomes], pa.int64()),
            "hash": [o.hash for o in outcomes],
            "width": pa.array([o.width for o in outcomes], pa.int32()),
            "height": pa.array([o.height for o in outcomes], pa.int32()),
            "taken": pa.array([o.taken for o in outcomes], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
        })



def _readable_here(e: Embedded) -> None:
    """A file a worker could not read, which this machine can: the photos are not shared."""
    try:
        read_file(e.path)
    except UnreadableImageError:
        return  # unreadable here too: skipped, as a local run skips it
    raise WorkerCannotReadError(
        f"a Ray worker on {e.host} cannot read {e.path} ({e.reason}), which this machine can; "
        "--ray needs the photos at the same path on every worker (a shared filesystem): mount them "
        "there, or index without --ray")
