"""Walking photo folders: which files are images, which are junk, and how symlinks are followed."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clipsearch.config import IMAGE_EXTENSIONS
from clipsearch.errors import BadInputError
from clipsearch.results import Skipped

# Folders that photo managers and operating systems fill with thumbnails and deleted files.
JUNK_DIRS = frozenset({"@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "lost+found", "__MACOSX"})
JUNK_FILES = frozenset({"Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileEntry]
    skipped: list[Skipped]


def normalize_root(root: str | os.PathLike[str]) -> str:
    """An absolute, normalised folder path; symlinks are kept so paths read as the user wrote them."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(path):
        raise BadInputError(f"folder not found: {path}")
    if not os.path.isdir(path):
        raise BadInputError(f"not a folder: {path} (give the folder that holds your photos)")
    return path


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def under_sql(paths: Sequence[str]) -> str:
    """A LanceDB filter for the rows of these paths: each path itself, and what is under it."""
    quoted = ["'" + p.replace("'", "''") + "'" for p in paths]
    prefixes = ["'" + (p.rstrip(os.sep) + os.sep).replace("'", "''") + "'" for p in paths]
    return " OR ".join([f"path IN ({', '.join(quoted)})", *(f"starts_with(path, {p})" for p in prefixes)]) \
        if paths else "false"


def _excluded(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(
    roots: Iterable[str],
    exclude: Sequence[str] = (),
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> ScanResult:
    """Every image file under `roots`, each real file and folder once, in a stable order.

    Hidden entries (names starting with '.', which covers macOS '._*' and '.DS_Store') and known
    junk folders are skipped. Symlinks are followed; a folder reached twice (a loop, or two links
    to one place) is walked once. `exclude` holds glob patterns matched against the path relative
    to its root and against the bare name.
    """
    files: list[FileEntry] = []
    skipped: list[Skipped] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for root in roots:
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                skipped.append(Skipped(folder, f"cannot open folder ({exc.strerror})"))
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                skipped.append(Skipped(folder, f"cannot list folder ({exc.strerror}); check its permissions"))
                continue
            subdirs = []
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name in JUNK_DIRS or name in JUNK_FILES:
                    continue
                rel = os.path.relpath(entry.path, root)
                if exclude and _excluded(rel, name, exclude):
                    continue
                try:
                    st = entry.stat()  # follows symlinks
                except OSError:
                    if entry.is_symlink():
                        if os.path.splitext(name)[1].lower() in extensions:
                            skipped.append(Skipped(entry.path, "broken symlink; fix or remove it"))
                        continue
                    skipped.append(Skipped(entry.path, "cannot stat file; check its permissions"))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(entry.path)
                    continue
                if os.path.splitext(name)[1].lower() not in extensions:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(Skipped(entry.path, "not a regular file (device, pipe or socket)"))
                    continue
                if not _valid_utf8(entry.path):
                    skipped.append(
                        Skipped(entry.path.encode("utf-8", "replace").decode("utf-8"),
                                "file name is not valid UTF-8; rename the file")
                    )
                    continue
                if (st.st_dev, st.st_ino) in seen_files:
                    continue
                seen_files.add((st.st_dev, st.st_ino))
                files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
            # reversed so that the stack pops folders in name order
            stack.extend(reversed(subdirs))
    return ScanResult(files, skipped)
