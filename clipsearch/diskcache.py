"""A bounded folder of derived files (re-rank features, thumbnails), keyed by content hash.

Entries are written atomically, so concurrent readers never see half a file, and evicted least
recently used first (a read bumps the file's mtime) once the whole folder outgrows its bound.
Everything in it can be made again: a damaged entry is a miss, and a cache that cannot be written
only costs speed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clipsearch.files import replacing

T = TypeVar("T")
# Re-measure the folder at least this often: other processes write to the same cache.
_RESCAN_EVERY = 1000


class DiskCache:
    def __init__(self, root: Path, namespace: str, max_bytes: int, suffix: str) -> None:
        self.root = Path(root)
        self.folder = self.root / namespace
        self.max_bytes = max_bytes
        self.suffix = suffix
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes under root, as last measured plus what we wrote
        self._writes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def file(self, key: str) -> Path:
        return self.folder / f"{key}{self.suffix}"

    def read(self, key: str, load: Callable[[str], T]) -> T | None:
        """`load(path)` of the entry, or None when it is missing or damaged (then it is removed)."""
        if not self.enabled:
            return None
        path = self.file(key)
        try:
            value = load(str(path))
            os.utime(path)  # recently used: evicted last
            return value
        except FileNotFoundError:
            return None
        except Exception:  # damaged: a miss, and dropped so that it is written again
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def write(self, key: str, save: Callable[[str], None]) -> bool:
        """Store an entry by letting `save(tmp_path)` write it; False when it could not be stored."""
        if not self.enabled:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with replacing(self.file(key)) as tmp:
                save(tmp)
                written = os.path.getsize(tmp)
        except Exception:  # full disk, read-only cache, a writer's own errors: only speed is lost
            return False
        with self._lock:
            self._writes += 1
            stale = self._total is None or self._writes % _RESCAN_EVERY == 0
            self._total = None if stale else self._total + written
        if stale or self._total > self.max_bytes:
            self.trim()
        return True

    def trim(self) -> None:
        """Delete least recently used entries (across all namespaces) until under the bound."""
        files = []
        for path in self.root.glob(f"*/*{self.suffix}"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
        with self._lock:
            self._total = total

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob(f"*/*{self.suffix}"))
