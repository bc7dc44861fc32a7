"""Walking photo folders: which files are images, which are junk, and how symlinks are followed."""

from __future__ import annotations

import array
import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from clipsearch.config import IMAGE_EXTENSIONS, INDEXED_EXTENSIONS, RAW_EXTENSIONS, RENDITION_EXTENSIONS
from clipsearch.errors import BadInputError
from clipsearch.results import Skipped

# Folders that photo managers and operating systems fill with thumbnails and deleted files.
JUNK_DIRS = frozenset({"@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "lost+found", "__MACOSX"})
JUNK_FILES = frozenset({"Thumbs.db", "desktop.ini"})


@dataclass(frozen=True, slots=True)  # a million of them in a large library's scan
class FileEntry:
    path: str
    size: int
    mtime_ns: int


class ScanResult:
    """The image files found, as columns (a million paths are 70 MB of Arrow strings, where as
    many FileEntry objects with their strings were 170 MB), and what was skipped and why."""

    def __init__(self, paths: pa.ChunkedArray, sizes: np.ndarray, mtimes: np.ndarray,
                 skipped: list[Skipped], sidecars: dict[str, int] | None = None,
                 pairs: dict[str, str] | None = None) -> None:
        self.paths, self.sizes, self.mtimes, self.skipped = paths, sizes, mtimes, skipped
        # photo path -> the newest mtime of its XMP sidecars, for the photos that have one
        self.sidecars = sidecars or {}
        # photo path -> its partner files as pair_stamp writes them, for the photos that have one
        self.pairs = pairs or {}
        # folders below a root on a device of their own (a nested mount) -> that device: once
        # unmounted, such a folder is an empty one on its parent's (clipsearch.build.roots.away)
        self.mounts: dict[str, int] = {}

    @classmethod
    def of(cls, files: Sequence[FileEntry], skipped: list[Skipped],
           sidecars: dict[str, int] | None = None, pairs: dict[str, str] | None = None) -> ScanResult:
        return cls(pa.chunked_array([pa.array([f.path for f in files], pa.string())]),
                   np.fromiter((f.size for f in files), np.int64, len(files)),
                   np.fromiter((f.mtime_ns for f in files), np.int64, len(files)), skipped, sidecars, pairs)

    def sidecar_mtimes(self) -> np.ndarray:
        """Each file's sidecar mtime (0: none), in the order of `paths`."""
        out = np.zeros(len(self), np.int64)
        if self.sidecars:
            at = pa.compute.index_in(pa.array(list(self.sidecars), pa.string()), value_set=self.paths)
            at = at.fill_null(-1).to_numpy()
            mtimes = np.fromiter(self.sidecars.values(), np.int64, len(self.sidecars))
            out[at[at >= 0]] = mtimes[at >= 0]
        return out

    def against(self, stored: pa.Table) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """The files found compared with `stored` (a table of path, size and mtime_ns, and
        sidecar_ns if it has it): its paths as one array; for each file found, its row there (-1:
        none) and whether the file is as that row says (its sidecars' time too). The comparison
        an index run and clipsearch.build.unchanged both make."""
        paths = stored.column("path").combine_chunks()
        at = pa.compute.index_in(self.paths, value_set=paths).fill_null(-1)
        at = at.to_numpy(zero_copy_only=False).astype(np.int64)
        known = at >= 0
        same = np.zeros(len(at), bool)
        same[known] = ((stored.column("size").to_numpy()[at[known]] == self.sizes[known])
                       & (stored.column("mtime_ns").to_numpy()[at[known]] == self.mtimes[known]))
        if "sidecar_ns" in stored.column_names:  # a sidecar written since its photo's row
            sidecar = stored.column("sidecar_ns").fill_null(0).to_numpy()
            same[known] &= sidecar[at[known]] == self.sidecar_mtimes()[known]
        return paths, at, same

    def stale_pairs(self, stored: pa.Table, at: np.ndarray) -> np.ndarray:
        """For each file found, whether its row (`at`, from `against`) records other partner
        files than are beside it now (a Live Photo's video replaced, a RAW added): the row needs
        only its `pairs` value again. All False when `stored` has no pairs column."""
        stale = np.zeros(len(at), bool)
        known = np.flatnonzero(at >= 0)
        if "pairs" not in stored.column_names or not len(known):
            return stale
        now = np.full(len(self), "", object)
        if self.pairs:
            where = pa.compute.index_in(pa.array(list(self.pairs), pa.string()), value_set=self.paths)
            where = where.fill_null(-1).to_numpy()
            stamps = np.array(list(self.pairs.values()), object)
            now[where[where >= 0]] = stamps[where >= 0]
        recorded = stored.column("pairs").fill_null("").take(pa.array(at[known]))
        stale[known] = pa.compute.not_equal(recorded, pa.array(now[known], pa.string())).to_numpy(
            zero_copy_only=False)
        return stale

    def __len__(self) -> int:
        return len(self.sizes)

    def entry(self, i: int) -> FileEntry:
        return FileEntry(self.paths[i].as_py(), int(self.sizes[i]), int(self.mtimes[i]))

    @property
    def files(self) -> list[FileEntry]:
        return [self.entry(i) for i in range(len(self))]


def normalize_root(root: str | os.PathLike[str]) -> str:
    """An absolute, normalised folder path; symlinks are kept so paths read as the user wrote them."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(path):
        raise BadInputError(f"folder not found: {path}")
    if not os.path.isdir(path):
        raise BadInputError(f"not a folder: {path} (give the folder that holds your photos)")
    return path


def is_photo_name(path: str, extensions: frozenset[str] = INDEXED_EXTENSIONS) -> bool:
    """Whether a file of this name is one a scan indexes (a photo's extension, not hidden)."""
    name = os.path.basename(path)
    return os.path.splitext(name)[1].lower() in extensions and not name.startswith(".")


def size_and_mtime(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, what a row records of it; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


SIDECAR_EXTENSIONS = (".xmp", ".XMP")


def sidecar_names(photo_name: str) -> list[str]:
    """The names an XMP sidecar of the photo `photo_name` may have: `IMG_1.jpg.xmp` (darktable,
    digiKam) and `IMG_1.xmp` (Lightroom), either case of the extension: the one rule the scan,
    the reader (clipsearch.media.words) and the watcher share."""
    stem = os.path.splitext(photo_name)[0]
    return list(dict.fromkeys(base + ext for base in (photo_name, stem) for ext in SIDECAR_EXTENSIONS))


# A still and a video beside it with the same name are one Live Photo (iPhones export
# IMG_1234.HEIC + IMG_1234.MOV, Android motion photos' exports .MP4): the still is indexed, the
# video is its motion, never a second item. Likewise a RAW beside a JPEG or HEIF of its name
# (a camera set to RAW + JPEG): the JPEG is indexed and shown, the RAW is its original.
MOTION_EXTENSIONS = frozenset({".mov", ".mp4"})
PARTNER_EXTENSIONS = MOTION_EXTENSIONS | RAW_EXTENSIONS  # what may be a photo's partner file


def partner_role(photo: str, other: str) -> str | None:
    """What the file named `other` is to the photo named `photo` beside it: "motion" (a Live
    Photo's video), "original" (the RAW of a RAW + JPEG pair), or None (nothing)."""
    (stem, ext), (other_stem, other_ext) = os.path.splitext(os.path.basename(photo)), os.path.splitext(other)
    ext, other_ext = ext.lower(), other_ext.lower()
    if other.startswith(".") or other_stem.lower() != stem.lower() or ext not in IMAGE_EXTENSIONS:
        return None
    if other_ext in MOTION_EXTENSIONS:
        return "motion"
    if other_ext in RAW_EXTENSIONS and ext in RENDITION_EXTENSIONS:
        return "original"
    return None


def partner_named(photo: str, names: Iterable[str], role: str) -> str | None:
    """Of file `names` beside `photo`, its partner in `role` (partner_role): one of the photo's
    own stem as written first (IMG_1.MOV before img_1.mov), then by name; None if none is."""
    stem = os.path.splitext(os.path.basename(photo))[0]
    found = sorted((n for n in names if partner_role(photo, n) == role),
                   key=lambda n: (os.path.splitext(n)[0] != stem, n))
    return found[0] if found else None


def pair_stamp(partners: Iterable[tuple[str, int, int]]) -> str:
    """A photo's partner files (name, size, mtime_ns) as its row's `pairs` column records them
    when it is indexed: the server hands out a partner only while it is still that file."""
    return "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in sorted(partners))


def recorded_pairs(stamp: str | None) -> dict[str, tuple[int, int]]:
    """pair_stamp's partners back: name -> (size, mtime_ns)."""
    out = {}
    for line in (stamp or "").splitlines():
        name, size, mtime = line.split("\t")
        out[name] = (int(size), int(mtime))
    return out


def pairs_beside(photos: Iterable[str]) -> dict[str, str]:
    """The pair_stamp of each of `photos` that has partners beside it (regular files, never
    links), one folder listing per folder."""
    by_folder: dict[str, list[str]] = {}
    for photo in photos:
        by_folder.setdefault(os.path.dirname(photo), []).append(photo)
    out: dict[str, str] = {}
    for folder, wanted in by_folder.items():
        files = []
        try:
            with os.scandir(folder or ".") as it:
                for entry in it:
                    if os.path.splitext(entry.name)[1].lower() not in PARTNER_EXTENSIONS:
                        continue  # only a partner's kind is worth a stat
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone since the listing
                    if stat.S_ISREG(st.st_mode):
                        files.append((entry.name, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
        _match_pairs(wanted, files, out)
    return out


def _match_pairs(photos: Iterable[str], files: list[tuple[str, int, int]], into: dict[str, str]) -> None:
    """The pair_stamp of each of `photos` (one folder's) with partners among `files` (that
    folder's regular files: name, size, mtime_ns)."""
    by_stem: dict[str, list[tuple[str, int, int]]] = {}
    for f in files:
        if os.path.splitext(f[0])[1].lower() in PARTNER_EXTENSIONS:
            by_stem.setdefault(os.path.splitext(f[0])[0].lower(), []).append(f)
    for photo in photos:
        stem = os.path.splitext(os.path.basename(photo))[0].lower()
        partners = [f for f in by_stem.get(stem, ()) if partner_role(photo, f[0])]
        if partners:
            into[photo] = pair_stamp(partners)


def originals_of(photos: Iterable[str]) -> dict[str, str]:
    """The RAW original beside each JPEG or HEIF of `photos` that has one (one folder listing
    per folder): photo -> RAW. A regular file, never a link, as the server's partners are; of several, the
    one partner_named picks, as the server does."""
    renditions = (p for p in photos if os.path.splitext(p)[1].lower() in RENDITION_EXTENSIONS)
    out: dict[str, str] = {}
    for photo, stamp in pairs_beside(renditions).items():
        if (raw := partner_named(photo, recorded_pairs(stamp), "original")) is not None:
            out[photo] = os.path.join(os.path.dirname(photo), raw)
    return out


def stills_in(names: Iterable[str]) -> dict[str, bool]:
    """The lower-case stems of the photos among file `names` (one folder's), each with whether
    a JPEG or HEIF is among them (which makes a RAW of its name the pair's original)."""
    out: dict[str, bool] = {}
    for stem, ext in map(os.path.splitext, names):
        ext = ext.lower()
        if ext in IMAGE_EXTENSIONS:
            key = stem.lower()
            out[key] = out.get(key, False) or ext in RENDITION_EXTENSIONS
    return out


def stills_of(folder: str) -> dict[str, bool]:
    """stills_in of the files in `folder` ({} when it cannot be listed)."""
    try:
        return stills_in(os.listdir(folder or "."))
    except OSError:
        return {}


def is_companion(path: str, stills: dict[str, bool] | None = None) -> bool:
    """Whether `path` is part of another file's item rather than an item itself: a Live Photo's
    video (a still of its name is beside it) or the RAW of a RAW + JPEG pair. `stills`: its
    folder's (stills_in), when the caller has listed the folder already."""
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower()
    if ext not in MOTION_EXTENSIONS and ext not in RAW_EXTENSIONS:
        return False
    if stills is None:
        stills = stills_of(os.path.dirname(path))
    paired = stills.get(stem.lower())
    return paired is not None and (ext in MOTION_EXTENSIONS or paired)


def with_pairs(paths: Iterable[str]) -> list[str]:
    """`paths`, each followed by the indexable files beside it with its name and another
    extension: a pair's other half, whose role changes when its partner comes or goes. One
    folder listing per folder; folders in `paths` are kept as they are."""
    paths = list(dict.fromkeys(paths))
    stems: dict[str, dict[str, list[str]]] = {}  # folder -> lower-case stem -> names
    for path in paths:
        folder = os.path.dirname(path)
        if folder in stems or os.path.isdir(path):
            continue
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            names = []
        stems[folder] = {}
        for name in names:
            if is_photo_name(name):
                stems[folder].setdefault(os.path.splitext(name)[0].lower(), []).append(name)
    out: list[str] = []
    for path in paths:
        folder, name = os.path.split(path)
        out.append(path)
        out += [os.path.join(folder, other) for other in stems.get(folder, {}).get(
            os.path.splitext(name)[0].lower(), []) if other != name]
    return list(dict.fromkeys(out))


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def root_of(path: str, roots: Iterable[str]) -> str | None:
    """The innermost of `roots` that holds `path` (or is it), or None."""
    return max((r for r in roots if is_under(path, r)), key=len, default=None)


def exclusions(patterns: Sequence[str]) -> list[str]:
    """Patterns as `excluded` compares them: `~` expanded (a shell leaves it in `--exclude=~/x`)."""
    return [os.path.expanduser(p) for p in patterns if p]


def excluded(path: str, rel: str, patterns: Sequence[str], is_dir: bool = False) -> bool:
    """Whether the file or folder at `path` (`rel` to its root) matches one of `patterns` as
    people write them: a name ('Screenshots', '*.gif'), a path below the root ('Private/*'), a
    path anywhere ('*/Screenshots/*', which also leaves out a root's own Screenshots/), or an
    absolute one ('/home/me/Photos/Private'); a folder also as 'NAME/'."""
    name = os.path.basename(path)
    forms = [name, rel, path] + ([name + os.sep, rel + os.sep, path + os.sep] if is_dir else [])
    return any(fnmatch.fnmatch(form, p) for p in patterns for form in forms)


def _valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(
    roots: Iterable[str],
    exclude: Sequence[str] = (),
    extensions: frozenset[str] = INDEXED_EXTENSIONS,
) -> ScanResult:
    """Every image file under `roots`, each real file and folder once, in a stable order.

    Hidden entries (names starting with '.', which covers macOS '._*' and '.DS_Store') and known
    junk folders are skipped. Symlinks are followed; a folder reached twice (a loop, or two links
    to one place) is walked once. `exclude` holds glob patterns (`excluded`); an excluded folder
    is not walked.
    """
    exclude = exclusions(exclude)
    chunks: list[pa.Array] = []
    names: list[str] = []  # the paths of the current chunk
    sizes, mtimes = array.array("q"), array.array("q")
    skipped: list[Skipped] = []
    seen_dirs: set[tuple[int, int]] = set()
    # each file's (device, inode), 16 bytes a file: the same file reached twice (a hard link, a
    # symlink) is found once the walk is done, not through a set of tuples (150 bytes a file)
    devices, inodes = array.array("Q"), array.array("Q")
    sidecars: dict[str, int] = {}
    pairs: dict[str, str] = {}
    mounts: dict[str, int] = {}
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
            folder_device = st.st_dev
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                skipped.append(Skipped(folder, f"cannot list folder ({exc.strerror}); check its permissions"))
                continue
            subdirs = []
            here, xmps, companions = len(names), [], []
            stills = stills_in(e.name for e in entries)
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name in JUNK_DIRS or name in JUNK_FILES:
                    continue
                rel = os.path.relpath(entry.path, root)
                if exclude and excluded(entry.path, rel, exclude, entry.is_dir()):
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
                    if st.st_dev != folder_device:
                        mounts[entry.path] = st.st_dev
                    continue
                if os.path.splitext(name)[1].lower() not in extensions:
                    if name.endswith(SIDECAR_EXTENSIONS) and stat.S_ISREG(st.st_mode):
                        xmps.append((name, st.st_mtime_ns))
                    continue
                if is_companion(name, stills):  # a Live Photo's motion or a pair's RAW: the still is the item
                    if stat.S_ISREG(st.st_mode) and not entry.is_symlink():
                        companions.append((name, st.st_size, st.st_mtime_ns))
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
                devices.append(st.st_dev)
                inodes.append(st.st_ino)
                names.append(entry.path)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
            if xmps:
                _match_sidecars(folder, names[here:], xmps, sidecars)
            if companions:
                _match_pairs(names[here:], companions, pairs)
            if len(names) >= _CHUNK:
                chunks.append(pa.array(names, pa.string()))
                names = []
            # reversed so that the stack pops folders in name order
            stack.extend(reversed(subdirs))
    chunks.append(pa.array(names, pa.string()))
    found = ScanResult(pa.chunked_array(chunks, pa.string()), np.frombuffer(sizes, np.int64),
                       np.frombuffer(mtimes, np.int64), skipped, sidecars, pairs)
    found.mounts = mounts
    return _first_of_each(found, np.frombuffer(devices, np.uint64), np.frombuffer(inodes, np.uint64))


_CHUNK = 16_384  # paths gathered as Python strings before they become Arrow's


def _first_of_each(found: ScanResult, dev: np.ndarray, ino: np.ndarray) -> ScanResult:
    """`found` without the later sightings of a file seen before (same device and inode)."""
    if not len(found):
        return found
    order = np.lexsort((np.arange(len(found)), ino, dev))  # each file's sightings in walk order
    repeat = np.zeros(len(found), bool)
    repeat[order[1:]] = (dev[order[1:]] == dev[order[:-1]]) & (ino[order[1:]] == ino[order[:-1]])
    if not repeat.any():
        return found
    keep = ~repeat
    out = ScanResult(found.paths.filter(pa.array(keep)), found.sizes[keep], found.mtimes[keep],
                     found.skipped, found.sidecars, found.pairs)
    out.mounts = found.mounts
    return out


def _match_sidecars(folder: str, photos: list[str], xmps: list[tuple[str, int]],
                    into: dict[str, int]) -> None:
    """The photos of one folder that have sidecars (sidecar_names), with their newest mtime."""
    mtime_of = dict(xmps)
    for photo in photos:
        found = [mtime_of[n] for n in sidecar_names(os.path.basename(photo)) if n in mtime_of]
        if found:
            into[photo] = max(found)
