"""The files made from the table that make searches fast: the text encoder's export, the row
snapshot and the search structure (FAISS). Any of them can be made again, so failing to write one
never fails a run; but it is never kept quiet either, and never retried on every search.

- A failed write is remembered, with about how much free space it needs: in this process, and in
  `unwritten.json` in the index folder when that can be written. Until the next `index` run asks
  again (`retry`), it is tried again only once the free space has grown past that figure
  (shutil.disk_usage is cheap), and never for a folder that refused the write for another reason
  (read-only, forbidden).
- Each file gets a checksum beside it (`FILE.sum`) once written, which `clipsearch check`
  verifies: bit rot or a bad copy of the same size is caught there, not by a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
from pathlib import Path

from clipsearch.files import replacing
from clipsearch.results import Unwritten

EXPORT = "text encoder export"
SNAPSHOT = "row snapshot"
SEARCH = "search structure"
STATE = "unwritten.json"
SUM = ".sum"
_lock = threading.Lock()
_remembered: dict[str, dict[str, dict]] = {}  # index folder -> what -> the failure


def space_fault(exc: BaseException) -> bool:
    from clipsearch.store.table import SPACE_ERRNOS, os_errno

    return os_errno(exc) in SPACE_ERRNOS or "No space left on device" in str(exc)


def free_bytes(db: Path) -> int:
    """Free space for the index at `db` (its nearest existing folder)."""
    folder = Path(db)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def failures(db: Path) -> dict[str, dict]:
    """What could not be written at `db`, by what: {"needs": bytes, "reason": ..., "space": bool}."""
    key = str(Path(db).resolve())
    try:
        found = json.loads((Path(db) / STATE).read_text(encoding="utf-8"))
        found = found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        found = {}
    with _lock:
        return {**found, **_remembered.get(key, {})}


def may_write(db: Path, what: str, retry: bool = False) -> bool:
    """Whether to try writing `what` now: always after no failure or when asked to `retry`, else
    only when a failure for want of space now has the space it needed."""
    failure = failures(db).get(what)
    if failure is None or retry:
        return True
    return bool(failure.get("space")) and free_bytes(db) >= int(failure.get("needs", 0))


def failed(db: Path, what: str, path: Path, needs: int, exc: BaseException) -> Unwritten:
    """Remember that writing `what` (at `path`, about `needs` bytes) failed with `exc`."""
    from clipsearch.store.table import describe_write_fault

    space = space_fault(exc)
    reason = describe_write_fault(exc)
    # `told`: whether a command has said so; a background job cannot, so the next command does
    record = {"needs": int(needs), "reason": reason, "space": space, "path": str(path), "told": False}
    _save(db, what, record)
    return Unwritten(what, str(path), int(needs), reason)


def untold(db: Path) -> list[Unwritten]:
    """The failures no command has told the user of yet (one an export job met, say)."""
    return [Unwritten(what, str(f.get("path", "")), int(f.get("needs", 0)), str(f.get("reason", "")))
            for what, f in sorted(failures(db).items()) if f.get("told") is False]


def told(db: Path, whats: list[str]) -> None:
    """The user has been told of these failures: no later command repeats them."""
    found = failures(db)
    for what in whats:
        if what in found and found[what].get("told") is False:
            _save(db, what, {**found[what], "told": True})


def succeeded(db: Path, what: str) -> None:
    if what in failures(db):
        _save(db, what, None)


def _save(db: Path, what: str, record: dict | None) -> None:
    key = str(Path(db).resolve())
    with _lock:
        mine = _remembered.setdefault(key, {})
        if record is None:
            mine.pop(what, None)
        else:
            mine[what] = record
    state = {k: v for k, v in failures(db).items() if k != what}
    if record is not None:
        state[what] = record
    # best effort: on a full disk even this small file may not fit; this process remembers
    with contextlib.suppress(OSError):
        if state:
            with replacing(Path(db) / STATE) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=2)
        else:
            (Path(db) / STATE).unlink(missing_ok=True)


# -- checksums ----------------------------------------------------------------------------------
def digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class Hashing:
    """A binary file's `write`, hashing what passes through (so a large file is not read back)."""

    def __init__(self, file) -> None:
        self.file, self.hash, self.size = file, hashlib.blake2b(digest_size=16), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):  # the rest of a file (closed, tell, flush ...) is the file's
        return getattr(self.file, name)


def record_sum(path: Path, written: Hashing | None = None) -> None:
    """Write the checksum of `path` beside it (a derived file that was just written whole; what
    `written` hashed on the way, else read back)."""
    path = Path(path)
    if written is not None:
        value = f"{written.hash.hexdigest()} {written.size}"
    else:
        value = f"{digest(path)} {path.stat().st_size}"
    with replacing(str(path) + SUM) as tmp, open(tmp, "w", encoding="ascii") as f:
        f.write(value + "\n")


def verify_sum(path: Path) -> str:
    """'ok', 'damaged' (the bytes differ from those recorded), 'missing' (the file is gone) or
    'unrecorded' (written before checksums were kept, or its checksum file is lost)."""
    path = Path(path)
    try:
        recorded, size = Path(str(path) + SUM).read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return "missing" if not path.exists() else "unrecorded"
    try:
        if path.stat().st_size != int(size):
            return "damaged"
        return "ok" if digest(path) == recorded else "damaged"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "damaged"


def remove(path: Path) -> None:
    """Delete a derived file and its checksum."""
    for target in (Path(path), Path(str(path) + SUM)):
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
