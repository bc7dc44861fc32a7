"""Following the photo folders: the index kept in step with them by the build side itself.

The OS says what changed (watchdog: inotify, FSEvents, ...; or polling, for shares that send no
events). A changed path waits until its size and mtime have been still for the settle time, so
a file being copied in is never read half-way; then every settled path goes to one
`Builder.update` (clipsearch.build.builder), the pipeline `index` runs, which walks nothing else and
commits what it changed. A full incremental rescan runs at the start (what happened while no
one watched) and every `rescan_every` seconds (what events missed).

One thread writes: the one running `Watcher.run`, which holds the index's lock. Work others ask
for (an `index` of a new folder, a `tag` run: clipsearch.server hands them over as jobs) runs
in that thread between batches, so nothing else ever waits on "index busy".

A root that goes missing or empty is offline (clipsearch.build.roots): its rows stay, and when it
comes back it is rescanned, which embeds nothing that was indexed.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clipsearch.build import roots as root_state
from clipsearch.errors import BadInputError, ClipsearchError, IndexInterrupted
from clipsearch.media.scan import (
    JUNK_DIRS,
    SIDECAR_EXTENSIONS,
    excluded,
    exclusions,
    is_photo_name,
    root_of,
    scan,
    size_and_mtime,
)
from clipsearch.media.words import photos_of_sidecar
from clipsearch.results import IndexSummary, Progress
from clipsearch.store.table import take_over_lock

# an observer stopped while its folder vanishes may log this race; nothing is lost by it
logging.getLogger("watchdog.observers.inotify").addFilter(
    lambda record: "called when the thread is inactive" not in record.getMessage())

SETTLE_SECONDS = 2.0
RESCAN_EVERY = 3600.0
TICK = 0.2  # how often settled paths and roots are looked at
FALLBACK_POLL = 10.0  # seconds between scans of a folder the system would not watch
QUERY_YIELD = 0.5  # the longest an image waits for the searches in flight (they come first)
SKIPPED_SHOWN = 50
SAID_PATHS = 3  # a commit's line names its paths up to this many
JOBS_KEPT = 100  # finished jobs whose result can still be asked for
JOBS_QUEUED = 100  # jobs waiting at once: past it a new one is refused, not held in memory
WATCH_LIMIT = ("the system's limit of inotify watches is reached (raise it: sudo sysctl "
               "fs.inotify.max_user_watches=524288)")


@dataclass
class Job:
    """Work handed to the watcher's thread (an `index` or `tag` run from another process)."""

    id: str
    kind: str
    run: Callable[[Callable[[Progress], None]], dict]
    state: str = "queued"  # queued, running, done, failed, cancelled
    progress: dict | None = None
    result: dict | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": self.progress,
                "result": self.result, "error": self.error}


def _ignored(path: str, roots: Sequence[str] = ()) -> bool:
    """Hidden or junk below its root (a root may itself sit in a hidden folder: ~/.local/photos)."""
    root = root_of(path, roots)
    rel = os.path.relpath(path, root) if root else path
    parts = [part for part in rel.split(os.sep) if part and part != "."]
    return any(part.startswith(".") or part in JUNK_DIRS for part in parts)


class Watcher:
    """Keeps the index a Builder writes in step with `roots` until `run`'s stop event is set.

    `settle`: seconds a file's size and mtime must stay still before it is read. `poll`: watch
    by scanning every so many seconds instead of OS events (network shares). `busy()`: whether
    searches are in flight; the build waits for them between images."""

    def __init__(self, builder, roots: Sequence[str], *, settle: float = SETTLE_SECONDS,
                 poll: float | None = None, rescan_every: float | None = RESCAN_EVERY,
                 exclude: Sequence[str] = (), busy: Callable[[], bool] = lambda: False,
                 note: Callable[[str], None] = lambda _m: None,
                 idle: Callable[[Callable[[Progress], None]], bool] | None = None) -> None:
        self.builder = builder
        self.roots: list[str] = sorted(set(roots))
        self.settle, self.poll, self.rescan_every = settle, poll, rescan_every
        self.exclude = exclusions(exclude)
        self.busy, self.note = busy, note
        # work for the quiet moments (serve --captions): one short slice per turn, True while
        # there is more; files that change and jobs come first
        self.idle = idle
        self._pending: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: deque[Job] = deque()
        self._all_jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._observers: dict[str, object] = {}  # root -> its observer
        self._polled: dict[str, str] = {}  # root -> why it is polled rather than watched
        self._offline: dict[str, str] = {}  # root -> why
        self._missing: set[str] = set()  # those offline because they are missing or empty
        self._skipped: deque = deque(maxlen=SKIPPED_SHOWN)
        self._state, self._progress = "starting", None
        self._last: dict | None = None
        self._paths: list[str] = []  # those the update being committed was asked for
        self._commits = 0
        self._totals = dict.fromkeys(("added", "updated", "moved", "removed", "embedded"), 0)
        self._rescanned = time.monotonic()

    # -- what others see and ask -------------------------------------------------------------
    def status(self) -> dict:
        manifest = self.builder.store.manifest
        with self._lock:
            queued = len(self._pending)
            jobs = [j.to_dict() for j in self._all_jobs.values() if j.state in ("queued", "running")]
        return {"state": self._state, "roots": list(self.roots), "queued": queued,
                "progress": self._progress, "last_commit": self._last, "commits": self._commits,
                "totals": dict(self._totals),
                "offline": {r: {"since": manifest.offline.get(r), "why": why}
                            for r, why in sorted(self._offline.items())},
                "polled": dict(self._polled), "skipped": [{"path": s.path, "reason": s.reason}
                                                          for s in list(self._skipped)],
                "jobs": jobs, "settle_seconds": self.settle, "poll_seconds": self.poll}

    def submit(self, kind: str, run: Callable[[Callable[[Progress], None]], dict]) -> Job:
        job = Job(str(next(self._ids)), kind, run)
        with self._lock:
            if len(self._jobs) >= JOBS_QUEUED:
                raise BadInputError(f"{len(self._jobs)} jobs are waiting already; let them finish (GET "
                                    "/api/status lists them) and send this one again")
            self._jobs.append(job)
            self._all_jobs[job.id] = job
            finished = [j for j in self._all_jobs.values() if j.state not in ("queued", "running")]
            for old in finished[:max(0, len(finished) - JOBS_KEPT)]:
                del self._all_jobs[old.id]
        self._wake.set()
        return job

    def job(self, id: str) -> Job | None:
        return self._all_jobs.get(id)

    def add_roots(self, folders: Sequence[str], progress: Callable[[Progress], None], exclude=(),
                  compact: bool = False, prune_offline: bool = False, keep_empty: bool = False,
                  ) -> IndexSummary:
        """Index `folders` (in the watcher's thread: a job's work) and watch them from now on
        (those that hold something, or all with `keep_empty`)."""
        summary = self.builder.index(list(folders), exclude, compact, prune_offline, keep_empty)
        for root in folders:
            if root not in self.roots and root not in summary.empty:
                self.roots = sorted({*self.roots, root})
                self._watch(root)
        self._committed(summary)
        return summary

    def remove_root(self, root: str, _progress=None) -> IndexSummary:
        """`roots remove` in the watcher's thread: its rows go, and it is watched no more."""
        summary = self.builder.remove_root(root)
        self._forget_root(root)
        self._committed(summary)
        return summary

    def _forget_root(self, root: str) -> None:
        """No longer watch `root` (moved or removed), nor remember it offline or missing."""
        root = os.path.abspath(root).rstrip(os.sep)
        self._unwatch(root)
        self._offline.pop(root, None)
        self._missing.discard(root)
        self.roots = [r for r in self.roots if r != root]

    def move_root(self, old: str, new: str, _progress=None) -> IndexSummary:
        """`roots move` in the watcher's thread: re-point the rows, watch `new` instead of `old`."""
        summary = self.builder.move_root(old, new)
        self._forget_root(old)
        self.roots = sorted({*self.roots, *self.builder.store.manifest.roots})
        for root in self.roots:
            self._watch(root)
        self._committed(summary)
        return summary

    # -- events --------------------------------------------------------------------------------
    def saw(self, path: str, is_dir: bool = False) -> None:
        """A path that changed: a photo, or a folder (created, moved or removed); a photo's XMP
        sidecar stands for its photos, whose words are read again (clipsearch.media.words)."""
        if not is_dir and path.endswith(SIDECAR_EXTENSIONS) and not _ignored(path, self.roots):
            for photo in photos_of_sidecar(path, is_photo_name):
                self.saw(photo)
            return
        if _ignored(path, self.roots) or not (is_dir or is_photo_name(path)) or path in self.roots:
            return
        if self._excluded(path):
            return
        now = time.monotonic()
        with self._lock:
            if is_dir and os.path.isdir(path):  # moved or copied in: each photo settles on its own
                found = scan([path], self._patterns())
                for p in found.paths.to_pylist():
                    self._pending[p] = (now, size_and_mtime(p))
            else:
                self._pending[path] = (now, size_and_mtime(path))
        self._wake.set()

    def _patterns(self) -> list[str]:
        """This watcher's --exclude patterns and those the index keeps (an earlier index run's)."""
        stored = self.builder.store.manifest.exclude if self.builder is not None else []
        return exclusions([*self.exclude, *stored])

    def _excluded(self, path: str) -> bool:
        """`path` or a folder between it and its root matches an --exclude pattern."""
        root = root_of(path, self.roots)
        patterns = self._patterns()
        if not patterns or root is None:
            return False
        folder, is_dir = path, os.path.isdir(path)
        while len(folder) > len(root):
            if excluded(folder, os.path.relpath(folder, root), patterns, is_dir):
                return True
            folder, is_dir = os.path.dirname(folder), True
        return False

    def _settled(self) -> list[str]:
        """The pending paths whose size and mtime were still for the settle time."""
        now, ready = time.monotonic(), []
        with self._lock:
            for path, (since, seen) in list(self._pending.items()):
                current = None if os.path.isdir(path) else size_and_mtime(path)
                if current != seen:
                    self._pending[path] = (now, current)
                elif now - since >= self.settle:
                    ready.append(path)
                    del self._pending[path]
        return ready

    # -- the writer's loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Watch and index until `stop` is set; the batch in hand is committed first."""
        self._stop = stop
        take_over_lock(self.builder.store.path)  # every write from here on is made in this thread
        for root in self.roots:
            self._watch(root)
        try:
            self._guarded(lambda progress: self._rescan(progress))
            while not stop.is_set():
                self._check_roots()
                self._run_jobs()
                if ready := self._settled():
                    self._guarded(lambda progress: self._update(ready, progress))
                if self.rescan_every and time.monotonic() - self._rescanned >= self.rescan_every:
                    self._guarded(lambda progress: self._rescan(progress))
                more = not self._pending and self._idle_slice()
                self._state, self._progress = "watching", None
                if not more:
                    self._wake.wait(TICK)
                self._wake.clear()
        finally:
            self._state = "stopped"
            for observer in self._observers.values():
                observer.stop()
            for observer in self._observers.values():
                observer.join(timeout=5)

    def _idle_slice(self) -> bool:
        if self.idle is None or self._stop.is_set():
            return False
        self._state = "captioning"
        self.builder.progress = progress = self._progress_for(None)
        try:
            return self.idle(progress)
        except (IndexInterrupted, KeyboardInterrupt):
            return False
        except ClipsearchError as exc:
            self.note(f"warning: {exc}; no more captions until the server restarts")
            self.idle = None
            return False

    def _progress_for(self, job: Job | None) -> Callable[[Progress], None]:
        def progress(p: Progress) -> None:
            if self._stop.is_set() or (job is not None and job.cancel.is_set()):
                raise KeyboardInterrupt  # between two images: the indexer commits and stops
            shown = {"phase": p.phase, "done": p.done, "total": p.total}
            self._progress = shown
            if job is not None:
                job.progress = shown
            waited = 0.0
            while self.busy() and waited < QUERY_YIELD:  # searches come first
                time.sleep(0.01)
                waited += 0.01

        return progress

    def _guarded(self, work: Callable[[Callable[[Progress], None]], IndexSummary | None]) -> None:
        self.builder.progress = progress = self._progress_for(None)
        try:
            summary = work(progress)
        except (IndexInterrupted, KeyboardInterrupt):  # (raised before the indexer's first image)
            return  # stopping: what was embedded is committed
        except ClipsearchError as exc:
            self.note(f"warning: {exc}")
            return
        if summary is not None:
            self._committed(summary)

    def _say(self, summary: IndexSummary, paths: Sequence[str]) -> None:
        """One line per commit that changed something (the paths too, when there are few), so
        a terminal that watches shows its work."""
        counts = [(n, what) for n, what in ((summary.added, "added"), (summary.updated, "updated"),
                                            (summary.moved, "moved"), (summary.removed, "removed"),
                                            (len(summary.skipped), "skipped")) if n]
        if not counts:
            return
        line = ", ".join(f"{what} {n}" for n, what in counts)
        if 0 < len(paths) <= SAID_PATHS:
            line += ": " + ", ".join(paths)
        why = "; ".join(f"{s.path}: {s.reason}" for s in summary.skipped[:SAID_PATHS])
        self.note(f"{time.strftime('%H:%M:%S')} {line}" + (f" (skipped {why})" if why else ""))

    def _rescan(self, _progress) -> None:
        self._state, self._rescanned = "scanning", time.monotonic()
        present = [r for r in self.roots if r not in self._missing]
        if present:
            self._committed(self.builder.index(present, self.exclude, keep_empty=True), present)

    def _update(self, paths: list[str], _progress) -> IndexSummary | None:
        # a folder that is there had its photos queued one by one, each settling on its own;
        # one that is gone stands for the rows under it
        paths = [p for p in paths if not os.path.isdir(p)]
        if not paths:
            return None
        self._state = "indexing"
        self._paths = paths
        return self.builder.update(paths)

    def _committed(self, summary: IndexSummary, scanned: Sequence[str] = ()) -> None:
        paths, self._paths = self._paths, []
        self._say(summary, paths)
        self._skipped.extend(summary.skipped)
        for root, why in summary.offline.items():
            self._went_offline(root, why)
        for root in scanned:  # found again by a full scan (the right drive is back)
            if root not in summary.offline and root in self._offline and root not in self._missing:
                del self._offline[root]
        if summary.added or summary.updated or summary.moved or summary.removed:
            self._commits += 1
        for key in self._totals:
            self._totals[key] += getattr(summary, key)
        self._last = {"at": root_state.now_iso(), "version": self.builder.store.version,
                      "images": self.builder.store.count(), "added": summary.added,
                      "updated": summary.updated, "moved": summary.moved, "removed": summary.removed,
                      "embedded": summary.embedded, "skipped": len(summary.skipped)}

    def _run_jobs(self) -> None:
        while True:
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
            if job is None:
                return
            if job.cancel.is_set():
                job.state = "cancelled"
                continue
            job.state, self._state = "running", job.kind
            self.builder.progress = progress = self._progress_for(job)
            try:
                job.result = job.run(progress)
                job.state = "done"
            except IndexInterrupted as exc:
                job.state, job.error = "cancelled", str(exc)
            except KeyboardInterrupt:  # cancelled before the run's first image: nothing committed
                job.state = "cancelled"
            except ClipsearchError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # a job's bug must not end the watching
                job.state, job.error = "failed", f"internal error ({type(exc).__name__}: {exc})"
            finally:
                # `tag` and `caption` write through the served index's own handle: the builder
                # reads back what they wrote (the manifest's sidecar choice too) before its next
                # batch, or it would go on with, and later save, the choice the user just changed
                self.builder.store.refresh()

    # -- roots ---------------------------------------------------------------------------------
    def _check_roots(self) -> None:
        for root in self.roots:
            why = root_state.absent(root)
            if why is not None and root not in self._missing and self.builder.store.holds_under(root):
                self._missing.add(root)
                self._unwatch(root)  # its watches went with it; it is watched again when it is back
                self._went_offline(root, why)
            elif why is None and root in self._missing:
                self.note(f"{root} is back; catching up with it")
                self._missing.discard(root)
                del self._offline[root]
                self._watch(root)
                self._guarded(lambda _p, r=root: self.builder.index([r], self.exclude, keep_empty=True))
            elif root not in self._observers and root not in self._missing:
                self._watch(root)  # a folder that was not there yet (and held nothing)

    def _went_offline(self, root: str, why: str) -> None:
        if root in self._offline:
            return
        self._offline[root] = why
        manifest = self.builder.store.manifest
        if root not in manifest.offline:
            manifest.offline[root] = root_state.now_iso()
            self.builder.store.save_manifest()
        self.note(f"note: {root} is offline: {why}; its photos stay in the index until it is back")

    def _watch(self, root: str) -> None:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        if root in self._observers or not os.path.isdir(root):
            return
        handler = _Handler(self)
        observer = Observer() if self.poll is None else PollingObserver(timeout=self.poll)
        try:
            observer.schedule(handler, root, recursive=True)
            observer.start()
        except OSError as exc:
            observer = PollingObserver(timeout=self.poll or FALLBACK_POLL)
            observer.schedule(handler, root, recursive=True)
            observer.start()
            why = WATCH_LIMIT if exc.errno == errno.ENOSPC else f"it cannot be watched ({exc})"
            self._polled[root] = why
            every = self.poll or FALLBACK_POLL
            self.note(f"note: {root} is checked for changes every {every:g} s instead of watched: {why}")
        self._observers[root] = observer

    def _unwatch(self, root: str) -> None:
        observer = self._observers.pop(root, None)
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)


class _Handler:
    """watchdog's events, down to the paths they concern."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a folder's own mtime: its files have events of their own
        for path in (event.src_path, getattr(event, "dest_path", "") or ""):
            if path:
                self.watcher.saw(os.fsdecode(path), event.is_directory)
