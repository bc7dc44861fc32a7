"""A bounded folder of derived files (re-rank features, thumbnails), keyed by content hash.

Entries are written atomically, so concurrent readers never see half a file, and each carries a
checksum of its bytes, so a damaged one is recognised (on reading it, or by `clipsearch check`)
and made again. Once the folder outgrows its bound, the least recently used entries go (a read
bumps the file's mtime) until it is back under a low-water mark, so a full cache is swept once
per tenth of its bound written instead of on every write. Everything in it can be made again: a
cache that cannot be written only costs speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clipsearch.files import replacing

T = TypeVar("T")
# Re-measure the folder at least this often: other processes write to the same cache.
_RESCAN_EVERY = 5000
# A trim leaves the folder at this share of its bound.
LOW_WATER = 0.9
# Each entry ends with MAGIC and a digest of what comes before it.
MAGIC = b"CSUM1"
_DIGEST = 16


def framed(data: bytes) -> bytes:
    return data + MAGIC + hashlib.blake2b(data, digest_size=_DIGEST).digest()


def unframed(raw: bytes) -> bytes | None:
    """The entry's payload, or None when its checksum does not match (damaged, or not ours)."""
    cut = len(raw) - len(MAGIC) - _DIGEST
    if cut < 0 or raw[cut:cut + len(MAGIC)] != MAGIC:
        return None
    data = raw[:cut]
    return data if hashlib.blake2b(data, digest_size=_DIGEST).digest() == raw[cut + len(MAGIC):] else None


class DiskCache:
    def __init__(self, root: Path, namespace: str, max_bytes: int, suffix: str,
                 low_water: float = LOW_WATER) -> None:
        self.root = Path(root)
        self.folder = self.root / namespace
        self.max_bytes = max_bytes
        self.suffix = suffix
        self.low_water = low_water
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes under root, as last measured plus what we wrote
        self._writes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def file(self, key: str) -> Path:
        return self.folder / f"{key}{self.suffix}"

    def read(self, key: str, decode: Callable[[bytes], T] = bytes) -> T | None:
        """`decode(payload)` of the entry, or None when it is missing, cannot be read now, or is
        damaged. Only a damaged entry (its checksum, or `decode`, fails on bytes read whole) is
        deleted: a read that fails for want of memory, file handles or a working disk says
        nothing about the entry."""
        if not self.enabled:
            return None
        path = self.file(key)
        raw = _bytes(path)
        if raw is None:
            return None
        payload = unframed(raw)
        try:
            if payload is None:
                raise ValueError("checksum mismatch")
            value = decode(payload)
        except MemoryError:
            return None
        except Exception:  # the bytes themselves are bad: a miss, and dropped to be written again
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return value

    def write(self, key: str, data: bytes) -> bool:
        """Store an entry; False when it could not be stored."""
        if not self.enabled:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entry = framed(data)
            with replacing(self.file(key)) as tmp, open(tmp, "wb") as f:
                f.write(entry)
        except OSError:  # full disk, read-only cache: only speed is lost
            return False
        with self._lock:
            self._writes += 1
            stale = self._total is None or self._writes % _RESCAN_EVERY == 0
            self._total = None if stale else self._total + len(entry)
            over = stale or self._total > self.max_bytes
        if over:
            self.trim()
        return True

    def _entries(self) -> list[tuple[int, int, Path]]:
        found = []
        for path in self.root.glob(f"*/*{self.suffix}"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                found.append((st.st_mtime_ns, st.st_size, path))
        return found

    def trim(self) -> None:
        """Measure the folder (across all namespaces); past the bound, delete least recently used
        entries until it is under the low-water mark."""
        files = self._entries()
        total = sum(size for _, size, _ in files)
        if total > self.max_bytes:
            goal = int(self.max_bytes * self.low_water)
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= goal:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                total -= size
        with self._lock:
            self._total = total

    def verify(self) -> tuple[int, int]:
        """Check every entry's checksum, deleting damaged ones: (entries checked, deleted)."""
        checked = deleted = 0
        for _, _, path in self._entries():
            raw = _bytes(path)
            if raw is None:
                continue
            checked += 1
            if unframed(raw) is None:
                with contextlib.suppress(OSError):
                    path.unlink()
                deleted += 1
        return checked, deleted

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob(f"*/*{self.suffix}"))


def _bytes(path: Path) -> bytes | None:
    """An entry's whole file, or None when it cannot be read now (missing, no handles, I/O)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
