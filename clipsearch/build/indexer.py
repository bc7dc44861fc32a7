"""scan -> diff against the store -> hash and decode in workers -> embed in batches -> commit.

A file whose size and mtime match its row is not read at all. Any other file is hashed; a hash
the index already holds (a touched, moved, renamed or copied file) reuses the stored vector, so
only new content is decoded and embedded. Rows are committed in batches (256 rows or 10 seconds,
whichever comes first) and deleted rows go last, so an interrupted run keeps all committed work,
loses at most seconds of it, and the next run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.build import roots as root_state
from clipsearch.build.prepare import prepare_photo
from clipsearch.config import COMMIT_EVERY, COMMIT_SECONDS
from clipsearch.errors import IndexInterrupted, RayWorkerError, UnreadableImageError, WorkerCannotReadError
from clipsearch.media.exif import Meta
from clipsearch.media.images import load_image, read_file
from clipsearch.media.kinds import is_video_name
from clipsearch.media.scan import (
    FileEntry,
    ScanResult,
    is_companion,
    is_photo_name,
    is_under,
    pairs_beside,
    scan,
    stills_of,
    with_pairs,
)
from clipsearch.media.words import read_meta, sidecar_mtime, word_columns, word_rows
from clipsearch.results import IndexSummary, Progress, Skipped
from clipsearch.store.kept import Kept
from clipsearch.store.kept import columns as kept_columns
from clipsearch.store.table import Store, under_sql

if TYPE_CHECKING:
    from clipsearch.build.distributed import Embedded
    from clipsearch.models.base import Embedder

ProgressCallback = Callable[[Progress], None]
# Embeds elsewhere (a Ray cluster): (paths, what gives the first 64 bits of each hash the index
# holds, sorted and unique; called only by a fan-out that ships them) -> each photo as it comes back
Fanout = Callable[[list[str], Callable[[], np.ndarray]], Iterator["Embedded"]]


@dataclass
class _Row:
    """What a run needs of a stored row: which file it was, and its content."""

    id: int
    path: str
    hash: str


DIFF_COLUMNS = ["path", "size", "mtime_ns"]  # what a scan is compared with


class Hashes:
    """The content hashes the index holds, for finding content it has already embedded. The
    first few files are looked up one by one (a B-tree lookup in the table: a commit of ten
    photos never reads a million hashes); past that, the hashes' first 64 bits are read once and
    sorted (8 MB at a million rows, searched by bisection; the whole hash is compared on a
    match), never a Python object per row."""

    ONE_BY_ONE = 64

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys: np.ndarray | None = None
        self._asked = 0
        self._looked_up: dict[str, int] = {}  # the rows found one by one (ONE_BY_ONE at most)
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._keys is None:
                table = self._store.read(["id", "hash"])
                self._hashes, self._ids = table.column("hash").combine_chunks(), table.column("id").to_numpy()
                keys = _keys64(self._hashes)
                self._order = np.argsort(keys, kind="stable")
                self._keys = keys[self._order]

    def find(self, digest: str) -> int | None:
        """The id of a row holding this content, or None."""
        if digest in self._looked_up:  # a worker asks whether it is known, then for its row
            return self._looked_up[digest]
        if self._keys is None and self._asked < self.ONE_BY_ONE:
            self._asked += 1  # threads may race past the count: a lookup or two more, no harm
            row = self._store.row_by_hash(digest, ["id"])
            if row is None:  # not remembered: a copy committed later in this run is found then
                return None
            self._looked_up[digest] = found = int(row["id"])
            return found
        self._load()
        key = np.uint64(int(digest[:16], 16))
        low, high = np.searchsorted(self._keys, key, "left"), np.searchsorted(self._keys, key, "right")
        for row in self._order[low:high]:
            if self._hashes[int(row)].as_py() == digest:
                return int(self._ids[row])
        return None

    def __contains__(self, digest: str) -> bool:
        return self.find(digest) is not None

    def keys64(self) -> np.ndarray:
        """The first 64 bits of each hash, sorted and unique (what Ray workers test against)."""
        self._load()
        keys = self._keys
        return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def _keys64(hashes: pa.Array) -> np.ndarray:
    """The first 64 bits of hex content hashes, as integers."""
    fixed = _fixed_width(hashes)
    if fixed.dtype.itemsize >= 16:
        prefixes = fixed.astype("S16")
        with contextlib.suppress(ValueError):  # a hash that is not hex (never written by clipsearch)
            return np.frombuffer(bytes.fromhex(prefixes.tobytes().decode("ascii")), ">u8").astype(np.uint64)
    return np.fromiter((int(h[:16], 16) if len(h) >= 16 else 0 for h in hashes.to_pylist()), np.uint64,
                       len(hashes))


@dataclass
class _Outcome:
    entry: FileEntry
    hash: str
    source: int | None = None  # the id of a row with the same content, whose vector is reused
    pixels: object | None = None  # preprocessed tensor, when the content is new
    width: int | None = None
    height: int | None = None
    taken: str | None = None
    vector: np.ndarray | None = None
    source_path: str | None = None
    meta: Meta | None = None
    video: bool = False
    # a video's frames (clipsearch.media.video): their times and vectors; `vector` is the first's
    times: list[float] | None = None
    vectors: np.ndarray | None = None
    duration: float | None = None

    @property
    def rows(self) -> int:
        return len(self.times) if self.times is not None else 1


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
        self._rows: dict[str, _Row] = {}  # the stored rows of the files to read, by path
        self._hashes = Hashes(store)  # content the index holds, for reusing vectors
        self._kept = Kept(store)  # and content it held until lately (clipsearch.store.kept)
        self._gone: set[str] = set()  # paths in the table whose files are no longer there
        self._embedder: Embedder | None = None
        self.changed = False  # whether the run wrote anything
        self.in_place = False  # whether it rewrote rows keeping their ids (a delta misses those)
        self.written: dict[str, str] = {}  # path -> hash of every row this run added or rewrote
        self.dropped: set[str] = set()  # hashes of the rows it removed or rewrote (some may live on)
        self.version_before = store.version
        # roots that look unplugged rather than emptied (clipsearch.build.roots): their rows are kept,
        # unless the run was asked to prune them
        self.keep_offline = True
        self.offline: dict[str, str] = {}  # root (or folder below one) -> why it counts as offline
        self.mounts: dict[str, int] = {}  # the nested mounts a scan found (clipsearch.media.scan)
        self.roots: list[str] = list(store.manifest.roots)  # where folder words start
        self._sidecars: dict[str, int] = {}  # path -> its sidecars' mtime, for the files read
        self._pairs: dict[str, str] = {}  # path -> its partner files (clipsearch.media.scan.pair_stamp)
        self._repaired: dict[str, str] = {}  # unchanged files whose partners changed: path -> stamp

    # -- the run ---------------------------------------------------------------------------
    def run(self, roots: Sequence[str], exclude: Sequence[str] = ()) -> IndexSummary:
        """Bring the rows of the files under `roots` up to date with the folders."""
        started = time.monotonic()
        self.roots = list(dict.fromkeys([*roots, *self.roots]))
        found = scan(roots, exclude)
        self.mounts = found.mounts
        self.progress(Progress("scan", len(found), len(found)))
        return self._apply(found, list(roots), started, list(roots))

    def run_paths(self, paths: Sequence[str], roots: Sequence[str] = ()) -> IndexSummary:
        """Bring the rows of these paths up to date: files and folders that were added, changed
        or removed (what a watcher saw), without walking anything else. Nothing is removed under
        a root of `roots` that is missing or empty."""
        started = time.monotonic()
        files, skipped = [], []
        # a file that comes or goes changes the role of its pair's other half (a RAW beside a
        # JPEG is the JPEG's original, alone it is a photo): both are looked at again
        paths = with_pairs(paths)
        stills = functools.cache(stills_of)  # each folder listed once, however many of its files
        for path in paths:  # once each, in order
            if os.path.isdir(path):
                found = scan([path])
                files += found.files
                skipped += found.skipped
            elif is_photo_name(path) and not is_companion(path, stills(os.path.dirname(path))):
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # gone again (its row, if it has one, goes) or unreadable
                if stat.S_ISREG(st.st_mode):
                    files.append(FileEntry(path, st.st_size, st.st_mtime_ns))
                else:  # `x.jpg -> /dev/zero` or a FIFO: never read, and the watcher goes on
                    skipped.append(Skipped(path, "not a regular file (device, pipe or socket)"))
        files = list({f.path: f for f in files}.values())  # a folder and a photo in it: one row
        touched = [r for r in roots if any(is_under(p, r) or is_under(r, p) for p in paths)]
        self.roots = list(dict.fromkeys([*roots, *self.roots]))
        sidecars = {f.path: m for f in files if (m := sidecar_mtime(f.path))}
        pairs = pairs_beside(f.path for f in files)
        return self._apply(ScanResult.of(files, skipped, sidecars, pairs), list(paths), started, touched,
                           scanned=False)

    def _apply(self, found: ScanResult, scope: list[str], started: float, roots: list[str],
               scanned: bool = True) -> IndexSummary:
        """`roots`: those to check for being offline (after a full scan of them, `scanned`, also
        by whether any of their indexed photos were found)."""
        self.summary.skipped.extend(found.skipped)
        self.summary.unlisted += len(found.skipped)
        candidates = self._diff(found, scope, [s.path for s in found.skipped], roots if scanned else [])
        if self.keep_offline:
            self.offline.update({r: why for r in roots if r not in self.offline
                                 and (why := root_state.absent(r)) is not None and self.store.holds_under(r)})
            self._gone = {p for p in self._gone if not any(is_under(p, r) for r in self.offline)}
        try:
            if candidates:
                self._process(candidates)
            self._flush()
            self._repair_pairs()
        except KeyboardInterrupt:
            self._flush(final=True)
            raise IndexInterrupted(self._saved) from None
        except (WorkerCannotReadError, RayWorkerError):
            self._flush(final=True)
            raise
        if self._gone:
            gone = sorted(self._gone)
            # their content may come back (moved out and in again, restored): kept a while
            removed = self.store.by_paths(sorted(self._gone - self._moved_sources), kept_columns(self.store))
            self._kept.keep(removed)
            self.dropped.update(removed.column("hash").to_pylist())
            self.store.delete_paths(gone)
            self.summary.removed = len(self._gone - self._moved_sources)
        self.summary.seconds = time.monotonic() - started
        self.changed = bool(candidates or self._gone or self._repaired)
        self.in_place = bool(self._repaired)
        return self.summary

    def _diff(self, found: ScanResult, scope: list[str], protected: list[str], scanned_roots: list[str],
              ) -> list[FileEntry]:
        """The files to read (new, or changed since their row), column by column: no Python
        object per stored row or per unchanged file. Sets the rows of those files, the paths
        gone from `scope` and the `scanned_roots` that look offline."""
        # the manifest records the next id before any row gets it (an index from before it did
        # says 0, and is asked its highest id once)
        self._next_id = self.store.manifest.next_id or self.store.highest_id() + 1
        words = self.store.has_words  # with them, a sidecar written since its row: read again
        stored = self.store.read(DIFF_COLUMNS + (["sidecar_ns"] if words else [])
                                 + (["pairs"] if self.store.has_pairs else []), under_sql(scope))
        paths, at, same = found.against(stored)
        known = at >= 0
        self._sidecars, self._pairs = found.sidecars, found.pairs
        for i in np.flatnonzero(same & found.stale_pairs(stored, at)):
            path = found.paths[int(i)].as_py()
            self._repaired[path] = found.pairs.get(path, "")
        self.summary.unchanged += int(same.sum())
        present = np.zeros(len(paths), bool)
        present[at[known]] = True
        if self.store.has_video:
            # a video's path is on each of its frames' rows, and `at` names only the first
            present = pc.is_in(paths, value_set=found.paths).to_numpy(zero_copy_only=False)
        del stored
        if self.keep_offline:
            devices = self.store.manifest.root_devices
            self.offline = {r: why for r in scanned_roots
                            if (why := root_state.lost(r, paths, present, devices.get(r))) is not None}
            protected = protected + list(self.offline)
        mounts, asked = self.store.manifest.mounts, {}
        for row in np.flatnonzero(~present):
            path = paths[int(row)].as_py()
            if any(is_under(path, p) for p in protected):
                continue
            # under a folder link or a nested mount whose drive is away: offline, as a root is
            if self.keep_offline and (away := root_state.away(path, self.roots, mounts, asked)):
                self.offline.setdefault(*away)
                continue
            self._gone.add(path)
        changed = np.flatnonzero(~same)
        candidates = [found.entry(int(i)) for i in changed]
        stored_paths = [e.path for e, i in zip(candidates, changed, strict=True) if known[i]]
        if stored_paths:  # the rows of changed files: a lookup by path, for the few there are
            for row in self.store.by_paths(stored_paths, ["id", "path", "hash"]).to_pylist():
                self._rows[row["path"]] = _Row(row["id"], row["path"], row["hash"])
        return candidates

    # -- hashing and decoding, in worker threads ------------------------------------------------
    def _work(self, entry: FileEntry, min_side: int, preprocess) -> _Outcome | Skipped:
        p = prepare_photo(entry.path, self._known, min_side, preprocess)
        if p.reason is None and p.pixels is None:
            if (source := self._hashes.find(p.hash)) is not None:
                return _Outcome(entry, p.hash, source=source, meta=p.meta)
            kept = self._kept.get(p.hash)
            if kept is not None and kept.times is not None and is_video_name(entry.path):
                # a video removed lately and back: its frames as they were, nothing decoded
                return _Outcome(entry, p.hash, vector=kept.vector, width=kept.width, height=kept.height,
                                taken=kept.taken, meta=p.meta, video=True, times=kept.times,
                                vectors=kept.vectors, duration=kept.duration)
            if is_video_name(entry.path):  # decoded and embedded in turn (_embed_video)
                return _Outcome(entry, p.hash, meta=p.meta, video=True)
            if kept is not None:
                return _Outcome(entry, p.hash, vector=kept.vector, width=kept.width, height=kept.height,
                                taken=kept.taken, meta=p.meta)
            p = prepare_photo(entry.path, lambda _h: False, min_side, preprocess)  # let go meanwhile
        if p.reason is not None:
            return Skipped(entry.path, p.reason)
        return _Outcome(entry, p.hash, pixels=p.pixels, width=p.width, height=p.height, taken=p.taken,
                        meta=p.meta)

    def _known(self, digest: str) -> bool:
        return digest in self._hashes or digest in self._kept

    def _outcomes(self, entries: list[FileEntry]) -> Iterator[_Outcome | Skipped]:
        if self._embedder is None and entries and all(e.path in self._rows for e in entries):
            # Only files the index holds, with a new size or mtime: touched (a copy, a restore, a
            # tool that rewrote the date) more often than changed. Their hashes are checked first,
            # and the model loads only if some content is new.
            entries = yield from self._known_content(entries)
            if not entries:
                return
        # The model loads only when some file needs decoding: an unchanged folder never pays for it.
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

    def _known_content(self, entries: list[FileEntry]) -> Iterator[_Outcome | Skipped]:
        """Read and hash `entries` without decoding: outcomes for those whose content the index
        holds (or kept), and, as the generator's value, the entries whose content is new."""
        def hashed(entry: FileEntry):
            return prepare_photo(entry.path, lambda _h: True, None, lambda image: None)

        if self.workers == 0:
            prepared = map(hashed, entries)
        else:
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clipsearch-hash")
            prepared = pool.map(hashed, entries)  # small results: no pixels
        new: list[FileEntry] = []
        try:
            for entry, p in zip(entries, prepared, strict=True):
                if p.reason is not None:
                    yield Skipped(entry.path, p.reason)
                elif (source := self._hashes.find(p.hash)) is not None:
                    yield _Outcome(entry, p.hash, source=source, meta=p.meta)
                elif is_video_name(entry.path):
                    new.append(entry)
                elif (kept := self._kept.get(p.hash)) is not None:
                    yield _Outcome(entry, p.hash, vector=kept.vector, width=kept.width, height=kept.height,
                                   taken=kept.taken, meta=p.meta)
                else:
                    new.append(entry)
        finally:
            if self.workers:
                pool.shutdown(wait=True, cancel_futures=True)
        return new

    # -- or read, hashed, decoded and embedded on a cluster ------------------------------------
    def _fanned_out(self, entries: list[FileEntry]) -> Iterator[_Outcome | Skipped]:
        by_path = {e.path: e for e in entries}
        # closed here, not when the stream is collected: an interrupted run's traceback keeps this
        # frame alive until after the builder has shut Ray down, and a Ray Data stream still
        # running then makes a stray thread start a second Ray runtime (and hang a minute)
        with contextlib.closing(self.fanout(list(by_path), self._hashes.keys64)) as stream:
            for e in stream:
                entry = by_path.pop(e.path, None)
                if entry is None:  # a second answer for one photo (a retried batch) must not add a row
                    continue
                if e.reason is not None:
                    if e.unread:
                        _readable_here(e)
                    yield Skipped(e.path, e.reason)
                elif e.vector is not None:
                    self.summary.embedded += 1
                    yield _Outcome(entry, e.hash, width=e.width, height=e.height, taken=e.taken,
                                   vector=e.vector)
                elif (source := self._hashes.find(e.hash)) is not None:
                    yield _Outcome(entry, e.hash, source=source)
                else:  # its hash shares its first 64 bits with indexed content: embed it here
                    outcome = _Outcome(entry, e.hash)
                    self._embed_one(outcome)
                    if outcome.vector is not None:
                        yield outcome

    # -- embedding and committing, in the calling thread --------------------------------------
    def _process(self, entries: list[FileEntry]) -> None:
        self.progress(Progress("embed", 0, len(entries)))
        if self.fanout is None:
            self._consume(self._outcomes(entries), len(entries))
            return
        # videos are read here: a worker's memory is sized for photos
        videos = [e for e in entries if is_video_name(e.path)]
        photos = [e for e in entries if not is_video_name(e.path)]
        with contextlib.closing(self._fanned_out(photos)) as fanned:
            self._consume(chain(fanned, self._outcomes(videos) if videos else ()), len(entries))

    def _consume(self, results: Iterator[_Outcome | Skipped], total: int) -> None:
        pending: list[_Outcome] = []
        for done, result in enumerate(results, start=1):
            if isinstance(result, Skipped):
                self.summary.skipped.append(result)
            elif result.video and result.vector is None:
                self._embed_video(result)
                if result.vector is not None:
                    self._buffer.append(result)
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
            self.progress(Progress("embed", done, total))
        if pending:
            self._embed(pending)

    def _embed(self, batch: list[_Outcome]) -> None:
        import torch

        vectors = self._embedder.embed_images(torch.stack([o.pixels for o in batch]))
        for outcome, vector in zip(batch, vectors, strict=True):
            outcome.vector, outcome.pixels = vector, None
        self.summary.embedded += len(batch)
        self._buffer.extend(batch)

    def _embed_video(self, o: _Outcome) -> None:
        """Decode the video's frames (in a thread, a few batches ahead) and embed them as they
        come: memory holds a few batches of pictures, however long the video."""
        from clipsearch.media.video import VideoInfo, frames

        self._embedder = embedder = self._embedder or self._load_embedder()
        info = VideoInfo(None, 0, 0, None)
        times: list[float] = []
        vectors: list[np.ndarray] = []
        batch: list[tuple[float, object]] = []

        def embed() -> None:
            import torch

            vectors.append(embedder.embed_images(torch.stack([pixels for _t, pixels in batch])))
            times.extend(t for t, _pixels in batch)
            batch.clear()

        # decoded and preprocessed in the producer's thread, beside the model
        prepared = ((t, embedder.preprocess(image)) for t, image in
                    frames(o.entry.path, embedder.decode_min_side, info))
        try:
            for t, pixels in ahead(prepared, 2 * self.batch_size):
                batch.append((t, pixels))
                if len(batch) >= self.batch_size:
                    embed()
            if batch:
                embed()
        except UnreadableImageError as exc:
            self.summary.skipped.append(Skipped(o.entry.path, exc.reason))
            return
        order = np.argsort(times, kind="stable")
        o.times = [times[i] for i in order]
        o.vectors = np.concatenate(vectors)[order]
        o.vector = o.vectors[0]
        o.width, o.height, o.taken, o.duration = info.width, info.height, info.created, info.duration
        self.summary.metadata_notes += [Skipped(o.entry.path, n) for n in info.notes]
        self.summary.embedded += 1
        self.summary.frames += len(o.times)

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
        known = [o for o in ready if o.entry.path in self._rows and not is_video_name(o.entry.path)]
        # a video's rows are its frames, as many as it has now: the old ones go in the same commit
        retimed = [o for o in ready if o.entry.path in self._rows and is_video_name(o.entry.path)]
        if fresh:
            self.store.add(self._table(fresh))
        if known:
            self.store.replace(self._table(known))
        if retimed:
            self.store.rewrite(self._table(retimed), [o.entry.path for o in retimed])
        for o in ready:
            self._count(o)
            old = self._rows.get(o.entry.path)
            if old is None or old.hash != o.hash:
                self.written[o.entry.path] = o.hash
                if old is not None:
                    self.dropped.add(old.hash)
        self._saved += len(ready)

    def _fill_reused_vectors(self, outcomes: list[_Outcome], final: bool) -> None:
        wanted = sorted({o.source for o in outcomes if o.vector is None})
        if not wanted:
            return
        video = ["t", "duration"] if self.store.has_video else []
        table = self.store.fetch(wanted, ["id", "path", "width", "height", "taken", "vector", *video])
        found = {row["id"]: row for row in table.to_pylist()}
        for o in outcomes:
            if o.vector is not None:
                continue
            row = found.get(o.source)
            if row is not None:
                o.vector = np.asarray(row["vector"], np.float32)
                o.width, o.height, o.taken = row["width"], row["height"], row["taken"]
                o.source_path = row["path"]
                if row.get("t") is not None:  # a moved or copied video: all its frames
                    frames = self.store.by_paths([row["path"]], ["t", "duration", "vector"]).sort_by("t")
                    o.times, o.duration = frames.column("t").to_pylist(), row["duration"]
                    o.vectors = self.store.matrix(frames.column("vector"))
                    o.video = True
            elif not final:
                # the source row was rewritten earlier in this run (two files swapped names)
                self._embed_one(o)

    def _embed_one(self, o: _Outcome) -> None:
        if is_video_name(o.entry.path):
            self._embed_video(o)
            return
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
        elif o.source is not None and o.source_path in self._gone:
            self.summary.moved += 1
            self._moved_sources.add(o.source_path)
        else:
            self.summary.added += 1

    def _table(self, outcomes: list[_Outcome]) -> pa.Table:
        n = sum(o.rows for o in outcomes)
        ids = range(self._next_id, self._next_id + n)
        self._next_id += n
        # recorded before the rows are written, so an id is never handed out twice, even after
        # its row was deleted and the run that deleted it was killed
        self.store.manifest.next_id = self._next_id
        self.store.save_manifest()
        dim = len(outcomes[0].vector)
        flat = np.concatenate([o.vector if o.times is None else o.vectors.ravel() for o in outcomes])
        repeat = np.array([o.rows for o in outcomes])
        table = pa.table({
            "path": [o.entry.path for o in outcomes],
            "size": pa.array([o.entry.size for o in outcomes], pa.int64()),
            "mtime_ns": pa.array([o.entry.mtime_ns for o in outcomes], pa.int64()),
            "hash": [o.hash for o in outcomes],
            "width": pa.array([o.width for o in outcomes], pa.int32()),
            "height": pa.array([o.height for o in outcomes], pa.int32()),
            "taken": pa.array([o.taken for o in outcomes], pa.string()),
            **self._word_columns(outcomes),
            "duration": pa.array([o.duration for o in outcomes], pa.float64()),
            "pairs": pa.array([self._pairs.get(o.entry.path) for o in outcomes], pa.string()),
        })
        if (repeat > 1).any():  # a row per frame
            table = table.take(pa.array(np.repeat(np.arange(len(outcomes)), repeat)))
        table = table.add_column(0, "id", pa.array(ids, pa.int64()))
        times = [t for o in outcomes for t in (o.times if o.times is not None else [None])]
        return table.append_column("t", pa.array(times, pa.float64())).append_column(
            "vector", pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(np.float32)), dim))

    def _repair_pairs(self) -> None:
        """Record the partners of unchanged photos whose partner files changed (or that were
        indexed before partners were recorded): their rows rewritten as they are, in one commit,
        with nothing read but the folders."""
        if not self._repaired:
            return
        rows = self.store.by_paths(list(self._repaired), self.store.names)
        stamps = [self._repaired[p] or None for p in rows.column("path").to_pylist()]
        rows = rows.set_column(rows.schema.get_field_index("pairs"), "pairs", pa.array(stamps, pa.string()))
        self.store.replace(rows)

    def _word_columns(self, outcomes: list[_Outcome]) -> dict[str, pa.Array]:
        for o in outcomes:
            if o.meta is None:  # embedded elsewhere (a Ray worker)
                o.meta = read_meta(o.entry.path)
            self.summary.metadata_notes += [Skipped(o.entry.path, n) for n in o.meta.notes]
        rows = word_rows([(o.entry.path, o.meta, o.taken, self._sidecars.get(o.entry.path, 0))
                          for o in outcomes], self.roots)
        return word_columns(rows)



def ahead(items: Iterator, n: int) -> Iterator:
    """`items`, produced in a thread up to `n` ahead of the caller (a video's decoding beside
    the model); what the producer raises is raised here, and a caller that stops early stops it."""
    import queue

    box: queue.Queue = queue.Queue(maxsize=max(1, n))
    done, stop = object(), threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                box.put(entry, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    break
            else:
                put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((done, exc))
        finally:
            with contextlib.suppress(Exception):
                items.close()  # its file is closed here, in the thread that ran it

    worker = threading.Thread(target=produce, name="clipsearch-video", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = box.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _fixed_width(column: pa.ChunkedArray) -> np.ndarray:
    """Strings as a numpy array of fixed-width bytes, straight from Arrow's buffers when they all
    have one length (content hashes do)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) and not array.null_count and pa.types.is_string(array.type):
        offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:array.offset + len(array) + 1]
        width = int(offsets[1] - offsets[0])
        if width and (np.diff(offsets) == width).all():
            data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
            return data.view(f"S{width}")
    return np.array(array.to_pylist(), dtype="S")


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
