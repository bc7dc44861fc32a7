"""Replacing a file so that a crash or a concurrent reader sees the old file or the new one,
never half of one, and with the permissions a new file would get (not mkstemp's private 0600,
which hid a shared index's files from its other users)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import, while nothing else can be creating files in between
_UMASK = _current_umask()


@contextlib.contextmanager
def replacing(target: str | os.PathLike[str], mode: int | None = None, durable: bool = False,
              ) -> Iterator[str]:
    """Yield a temporary path beside `target`. When the block ends without error, whatever was
    written there replaces `target` in one rename, with `mode` (default: a new file's under the
    umask), synced to disk if `durable` (the file, then the folder holding the rename); on error
    it is removed and `target` is untouched."""
    target = os.fspath(target)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".clipsearch-", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, target)
        if durable:
            sync_folder(os.path.dirname(target) or ".")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk: a power cut after os.replace can
    otherwise bring back the old name. Windows opens no folders this way; it needs no such step."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and platforms) refuse to sync a folder: nothing to gain
        pass
    finally:
        os.close(fd)


class LockHeld(Exception):
    """The lock is held by another process, whose pid (as it wrote it) is `holder`."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def holding(fd: int, wait: bool) -> Iterator[None]:
    """An exclusive advisory lock (flock) on the open file `fd`, with this process's pid written
    into it for whoever finds the lock taken, until the block ends (closing `fd` releases it, as
    the process's end does). Without `wait`, a lock held elsewhere raises LockHeld at once. The
    index's writer lock and the text export's lock are both taken this way."""
    import fcntl

    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeld(os.pread(fd, 32, 0).decode(errors="ignore").strip() or "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
