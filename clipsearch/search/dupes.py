"""Duplicate photos: groups of identical content (same hash) and of near-duplicates (CLIP cosine
at or above a threshold), and the keeper rule that names the one to keep in each group.

Nothing is decoded: the index already holds every image's hash and vector.

Near-duplicate groups are complete-linkage clusters: every two photos in a group are at least
`threshold` alike, so a string of intermediates (a burst panning across a room) can never join
two unrelated photos. Pairs above the threshold are merged from the most alike down; two groups
join only when every photo of one is above the threshold with every photo of the other.

Finding the pairs: up to EXACT_MAX distinct contents, all against all (exact). Above it, each
vector is compared with those in the few inverted lists nearest to it: the index's own search
structure (IVF-SQ8, with every pair it finds re-scored exactly), or, for a collection still
searched flat, a temporary IVF over float vectors. A near-duplicate sits so close to its original
that it almost always shares its list (benchmarks/dupes.py measures the planted groups found).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.config import RAW_EXTENSIONS
from clipsearch.errors import BadInputError
from clipsearch.media.scan import originals_of
from clipsearch.results import Hit, ImageRecord
from clipsearch.store.layers import within
from clipsearch.store.table import RowSource

if TYPE_CHECKING:
    from clipsearch.store.ann import AnnIndex

# Calibrated on generated copies against distinct photos (docs/guides/duplicates.md; benchmarks/dupes.py).
DEFAULT_THRESHOLD = 0.95
EXACT_MAX = 16_384  # distinct contents compared all against all (about a second here)
AROUND_MAX = 2_048  # rows a search's collapse follows near-duplicate pairs to, at most
NPROBE = 8  # inverted lists each vector's near-duplicates are looked for in
_SQ8_MARGIN = 0.01  # 8-bit scores are within ~0.002 of the truth: look a little wider, re-score
_BATCH = 16_384
_LOOKUP_MAX = 4_096

# Lower is preferred. A lossless file is the original or a perfect copy, so keeping it loses
# nothing; of the lossy formats, phones write HEIC and JPEG, while WebP, AVIF and GIF are what the
# web and messengers re-encode to.
_FORMAT_RANK = {
    **dict.fromkeys((e.lstrip(".") for e in RAW_EXTENSIONS), 0),
    **dict.fromkeys(("png", "tif", "tiff", "bmp"), 1),
    **dict.fromkeys(("heic", "heif", "hif"), 2),
    **dict.fromkeys(("jpg", "jpeg", "jpe", "jfif"), 3),
}
_OTHER_FORMAT = 4
_FORMAT_NAME = {"jpe": "JPEG", "jpg": "JPEG", "jfif": "JPEG", "tif": "TIFF", "hif": "HEIF"}


@dataclass(frozen=True)
class Member:
    """One photo of a group, and its CLIP cosine with the group's keeper (1.0 for the keeper and
    for identical copies)."""

    image: ImageRecord
    similarity: float
    original: str | None = None  # the RAW of a RAW + JPEG pair: it goes where the JPEG goes

    def to_dict(self) -> dict:
        i = self.image
        out = {"id": i.id, "path": i.path, "size": i.bytes, "width": i.width, "height": i.height,
               "taken": i.taken, "similarity": round(self.similarity, 6)}
        return out | {"original": self.original} if self.original else out


@dataclass(frozen=True)
class Group:
    """Photos that are copies of one another. `members` starts with the suggested keeper;
    `reason` says why it is the keeper. `kind` is 'exact' when every member has the same content."""

    number: int
    kind: str
    members: list[Member]
    reason: str

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def extras(self) -> list[Member]:
        """Every member but the keeper: what a user may remove."""
        return self.members[1:]

    def to_dict(self) -> dict:
        return {"group": self.number, "kind": self.kind, "keeper": self.keeper.to_dict(),
                "members": [m.to_dict() for m in self.members], "reason": self.reason}


def check_threshold(threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise BadInputError(f"--threshold {threshold} is not a cosine similarity in (0, 1]; "
                            f"near-duplicates score {DEFAULT_THRESHOLD} or more (the default)")
    return float(threshold)


def find(source: RowSource, ann: AnnIndex | None, threshold: float = DEFAULT_THRESHOLD, *,
         exact: bool = False, allowed: np.ndarray | None = None, nprobe: int = NPROBE) -> list[Group]:
    """Every duplicate group among the rows of `source` (only the `allowed` ids, if given):
    identical content first, then near-duplicates, each kind largest first.

    `ann` is the index's search structure, used above EXACT_MAX distinct contents when it is an
    IVF; `exact=True` groups identical content only (no vectors are read)."""
    threshold = check_threshold(threshold)
    rows = source.read(["id", "hash", *(["path", "t"] if source.has_video else [])])
    if allowed is not None:
        rows = rows.filter(pc.is_in(rows.column("id"), value_set=pa.array(allowed, pa.int64())))
    return _find(source, ann, rows, threshold, exact, nprobe)


def _one_row_per_video(source: RowSource, rows: pa.Table) -> tuple[pa.Table, dict[int, np.ndarray]]:
    """`rows` with each video's frames folded into its first row, and each video's vector: the
    mean of its frames (a re-encode has nearly the same one; two videos that share an opening,
    a black one say, do not)."""
    if "t" not in rows.column_names or rows.column("t").null_count == rows.num_rows:
        return rows.select(["id", "hash"]), {}
    video = pc.is_valid(rows.column("t"))
    frames = rows.filter(video).sort_by([("path", "ascending"), ("id", "ascending")])
    paths = frames.column("path").to_numpy(zero_copy_only=False)
    first = np.ones(len(paths), bool)
    first[1:] = paths[1:] != paths[:-1]
    firsts = frames.filter(pa.array(first))
    ids, matrix = _load(source, np.sort(frames.column("id").to_numpy()))
    owner = dict(zip(frames.column("id").to_pylist(), np.cumsum(first) - 1, strict=True))
    sums = np.zeros((int(first.sum()), matrix.shape[1]), np.float64)
    np.add.at(sums, [owner[i] for i in ids.tolist()], matrix)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    reps = firsts.column("id").to_pylist()
    kept = pa.concat_tables([rows.filter(pc.invert(video)).select(["id", "hash"]),
                             firsts.select(["id", "hash"])])
    return kept, {rep: means[k].astype(np.float32) for k, rep in enumerate(reps)}


def groups_around(source: RowSource, ann: AnnIndex, ids: Sequence[int], threshold: float = DEFAULT_THRESHOLD,
                  allowed: np.ndarray | None = None) -> list[Group]:
    """The groups that the rows `ids` belong to (the same groups `find` forms), found by following
    near-duplicate pairs out from those rows through the search structure instead of comparing
    the whole index: what `search --collapse` asks about its hits. Only `allowed` ids, if given."""
    threshold = check_threshold(threshold)
    margin = 0.0 if ann.kind == "flat" else _SQ8_MARGIN
    seen = set(int(i) for i in ids)
    frontier = sorted(seen)
    while frontier and len(seen) < AROUND_MAX:
        _, matrix = _load(source, np.asarray(frontier, np.int64))
        _, near, _ = ann.within(matrix, threshold - margin, NPROBE)
        near = np.unique(near)
        if allowed is not None:
            near = near[within(near, allowed)]
        frontier = sorted(set(near.tolist()) - seen)[:AROUND_MAX - len(seen)]
        seen.update(frontier)
    rows = source.fetch(sorted(seen), ["id", "hash", *(["path", "t"] if source.has_video else [])])
    return _find(source, None, rows, threshold, False, NPROBE)


def _find(source: RowSource, ann: AnnIndex | None, rows: pa.Table, threshold: float, exact: bool,
          nprobe: int) -> list[Group]:
    rows, videos = _one_row_per_video(source, rows)
    ids = rows.column("id").to_numpy()
    # equal codes for equal hashes: a million hashes as Python strings would cost 100 MB
    hashes = rows.column("hash").combine_chunks().dictionary_encode().indices.to_numpy()
    # one representative row (the lowest id) per content: copies share their vector
    order = np.lexsort((ids, hashes))
    ids, hashes = ids[order], hashes[order]
    first = np.ones(len(ids), bool)
    first[1:] = hashes[1:] != hashes[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(ids)))
    copies = {int(ids[s]): ids[s:s + n].tolist() for s, n in zip(starts, sizes, strict=True) if n > 1}
    clusters = [[rep] for rep in copies]
    vectors: dict[int, np.ndarray] = {}
    if not exact and len(starts) > 1:
        pairs, vectors = _pairs(source, ann, np.sort(ids[starts]), threshold, nprobe, videos)
        near = [c for c in _complete_linkage(pairs) if len(c) > 1]
        joined = {r for c in near for r in c}
        clusters = near + [c for c in clusters if c[0] not in joined]
    content_of = {i: rep for rep, members in copies.items() for i in members}
    members = [i for c in clusters for r in c for i in copies.get(r, [r])]
    records = {r["id"]: ImageRecord.from_row(r)
               for r in source.fetch(members, source.meta_columns).to_pylist()}
    originals = originals_of(r.path for r in records.values())  # each folder listed once
    groups = []
    for cluster in clusters:
        images = [records[i] for r in cluster for i in copies.get(r, [r]) if i in records]
        kind = "exact" if len(cluster) == 1 else "near"
        groups.append(_group(images, kind, {i.id: content_of.get(i.id, i.id) for i in images}, vectors,
                             originals))
    groups.sort(key=lambda g: (g.kind != "exact", -len(g.members), g.keeper.image.path))
    return [Group(n, g.kind, g.members, g.reason) for n, g in enumerate(groups, 1)]


# -- finding pairs ---------------------------------------------------------------------------
def _pairs(source: RowSource, ann: AnnIndex | None, reps: np.ndarray, threshold: float, nprobe: int,
           videos: dict[int, np.ndarray] | None = None,
           ) -> tuple[dict[tuple[int, int], float], dict[int, np.ndarray]]:
    """{(a, b): cosine} for a < b of the representatives `reps` (sorted) at or above `threshold`,
    and the vectors of every representative in a pair. `videos`: a video's representative row ->
    the vector it is compared by (the mean of its frames)."""
    import faiss

    from clipsearch.store.ann import FLAT_MAX, range_search

    videos = videos or {}
    if len(reps) > FLAT_MAX and ann is not None and ann.kind == "ivf":
        # compared frame by frame through the structure, a video would match any video sharing a
        # frame with it: at this size videos are grouped as identical copies only
        return _pairs_ivf(source, ann, reps[~within(reps, np.asarray(sorted(videos), np.int64))]
                          if videos else reps, threshold, nprobe)
    ids, matrix = _load(source, reps)
    if videos:
        matrix = matrix.copy()  # (it may be a view of the table's own buffers)
    for k in np.flatnonzero(within(ids, np.asarray(sorted(videos), np.int64))) if videos else ():
        matrix[k] = videos[int(ids[k])]
    if len(ids) <= EXACT_MAX:
        index = faiss.IndexFlatIP(matrix.shape[1])
    else:
        from clipsearch.store.ann import nlist_for

        quantizer = faiss.IndexFlatIP(matrix.shape[1])
        index = faiss.IndexIVFFlat(quantizer, matrix.shape[1], nlist_for(len(ids)) // 4,
                                   faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(matrix[np.sort(rng.choice(len(ids), min(len(ids), 40 * index.nlist), replace=False))])
        index.nprobe = nprobe
    index.add(matrix)
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), _BATCH):
        a, b, s = range_search(index, matrix[start:start + _BATCH], threshold)
        a += start
        keep = b > a
        for x, y, score in zip(ids[a[keep]].tolist(), ids[b[keep]].tolist(), s[keep].tolist(), strict=True):
            found[(x, y)] = score
    used = {i for pair in found for i in pair}
    at = np.searchsorted(ids, sorted(used))
    return found, {int(ids[k]): matrix[k] for k in at}


def _pairs_ivf(source: RowSource, ann: AnnIndex, reps: np.ndarray, threshold: float, nprobe: int,
               ) -> tuple[dict[tuple[int, int], float], dict[int, np.ndarray]]:
    """As `_pairs`, through the index's IVF-SQ8 structure: the vectors are streamed twice (to
    find candidate pairs, then to re-score them exactly), so a million never sit in memory."""
    candidates: list[tuple[np.ndarray, np.ndarray]] = []
    for ids, matrix in source.iter_vectors(batch_rows=_BATCH):
        mine = within(ids, reps)
        if not mine.any():
            continue
        a, b, _ = ann.within(matrix[mine], threshold - _SQ8_MARGIN, nprobe)
        a = ids[mine][a]
        keep = (b > a) & within(b, reps)
        candidates.append((a[keep], b[keep]))
    if not candidates:
        return {}, {}
    a = np.concatenate([c[0] for c in candidates])
    b = np.concatenate([c[1] for c in candidates])
    used = np.unique(np.concatenate([a, b]))
    ids, matrix = _load(source, used)
    scores = np.einsum("ij,ij->i", matrix[np.searchsorted(ids, a)], matrix[np.searchsorted(ids, b)])
    found = {(x, y): s for x, y, s in zip(a.tolist(), b.tolist(), scores.tolist(), strict=True)
             if s >= threshold}
    return found, {int(i): matrix[k] for k, i in enumerate(ids.tolist())}


def _load(source: RowSource, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the rows with the `wanted` ids (sorted), in id order: looked up by id
    when they are few, else picked out of the whole table as it streams past."""
    if len(wanted) <= _LOOKUP_MAX:
        rows = source.fetch(wanted.tolist(), ["id", "vector"]).sort_by("id")
        return rows.column("id").to_numpy(), source.matrix(rows.column("vector"))
    parts_ids, parts = [], []
    for ids, matrix in source.iter_vectors(batch_rows=_BATCH):
        mine = within(ids, wanted)
        parts_ids.append(ids[mine])
        parts.append(matrix[mine])
    ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, np.int64)
    matrix = np.concatenate(parts) if parts else np.zeros((0, source.manifest.dim), np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(matrix[order])


# -- grouping --------------------------------------------------------------------------------
def _complete_linkage(pairs: dict[tuple[int, int], float]) -> list[list[int]]:
    """Clusters in which every two members are one of `pairs`, merged from the most alike pair
    down (ties in id order, so the result never depends on the order pairs were found in)."""
    cluster_of: dict[int, list[int]] = {}
    for (a, b), _ in sorted(pairs.items(), key=lambda p: (-p[1], p[0])):
        ca, cb = cluster_of.setdefault(a, [a]), cluster_of.setdefault(b, [b])
        if ca is cb:
            continue
        if all((min(x, y), max(x, y)) in pairs for x in ca for y in cb):
            ca.extend(cb)
            for y in cb:
                cluster_of[y] = ca
    seen, out = set(), []
    for cluster in cluster_of.values():
        if id(cluster) not in seen:
            seen.add(id(cluster))
            out.append(sorted(cluster))
    return out


def _group(images: list[ImageRecord], kind: str, content_of: dict[int, int],
           vectors: dict[int, np.ndarray], originals: dict[str, str]) -> Group:
    """`originals`: the RAW of each member that is a RAW + JPEG pair's JPEG."""
    ranked = sorted(images, key=lambda i: preference(i, i.path in originals))
    keeper = ranked[0]
    kept = vectors.get(content_of[keeper.id])
    members = []
    for image in ranked:
        same = content_of[image.id] == content_of[keeper.id]
        theirs = vectors.get(content_of[image.id])
        similarity = 1.0 if same or kept is None or theirs is None else float(kept @ theirs)
        members.append(Member(image, similarity, originals.get(image.path)))
    return Group(0, kind, members, reason(ranked[0], ranked[1], originals))


# -- the keeper rule -------------------------------------------------------------------------
def _format(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".")


def _pixels(image: ImageRecord) -> int:
    return (image.width or 0) * (image.height or 0)


# A folder that holds copies rather than the photos a person filed, and a file named as a copy
# (what file managers and phones call the second one): never the keeper while the filed one is there
_COPY_FOLDER = re.compile(r"back\s*-?\s*ups?|(?:^|\W)cop(?:y|ies)(?:\W|$)|duplicate|(?:^|\W)dupes?(?:\W|$)"
                          r"|(?:^|\W)trash(?:\W|$)|recycle", re.IGNORECASE)
_COPY_NAME = re.compile(r"(?:^|[\s_.\-(])cop(?:y|ie)(?:[\s_\-]*\(?\d+\)?)?\)?$|\s\(\d+\)$|~\d*$",
                        re.IGNORECASE)


def _copy_folder(path: str) -> str | None:
    """The folder of `path` whose name says it holds copies (backup/, Copies, Duplicates ...)."""
    return next((f for f in os.path.dirname(path).split(os.sep) if f and _COPY_FOLDER.search(f)), None)


def _copy_name(path: str) -> bool:
    return bool(_COPY_NAME.search(os.path.splitext(os.path.basename(path))[0]))


def preference(image: ImageRecord, paired: bool = False) -> tuple:
    """Sort key of the keeper rule, best first: largest resolution; then the original over a
    re-encode (a RAW + JPEG pair, `paired`, whose RAW is the camera's own; a photo that still
    has its camera's capture time, which re-encoding usually strips; then the format,
    _FORMAT_RANK, RAW first); then earliest capture time; then the larger file (re-encoding a
    lossy file only loses); then the copy a person filed: not in a backup- or copy-like folder,
    not named as a copy, with the user's keywords, the oldest file; then shortest path."""
    return (-_pixels(image), not paired, image.taken is None,
            _FORMAT_RANK.get(_format(image.path), _OTHER_FORMAT), image.taken or "", -image.bytes,
            _copy_folder(image.path) is not None, _copy_name(image.path), not image.keywords,
            image.mtime_ns, len(image.path), image.path)


def _format_name(path: str) -> str:
    ext = _format(path)
    return _FORMAT_NAME.get(ext, ext.upper() or "no extension")


def reason(keeper: ImageRecord, runner_up: ImageRecord, originals: dict[str, str] | None = None) -> str:
    """Why `keeper` is preferred to the next best member, in words (`originals`: the RAWs of
    the members that are RAW + JPEG pairs)."""
    originals = originals or {}
    if _pixels(keeper) != _pixels(runner_up):
        return (f"largest: {keeper.width}x{keeper.height} "
                f"(next {runner_up.width or '?'}x{runner_up.height or '?'})")
    if keeper.path in originals and runner_up.path not in originals:
        return f"same size; the original: its RAW is beside it ({os.path.basename(originals[keeper.path])})"
    if runner_up.taken is None and keeper.taken is not None:
        return "same size; the original: it has the camera's capture time, which the copies lost"
    mine, theirs = (_FORMAT_RANK.get(_format(i.path), _OTHER_FORMAT) for i in (keeper, runner_up))
    if mine != theirs:
        return f"same size; original format: {_format_name(keeper.path)} over {_format_name(runner_up.path)}"
    if keeper.taken != runner_up.taken:
        return f"same size and format; taken first: {keeper.taken}"
    if keeper.bytes != runner_up.bytes:
        return (f"same size, format and capture time; largest file, the least compressed "
                f"({keeper.bytes:,} bytes, next {runner_up.bytes:,})")
    if (folder := _copy_folder(runner_up.path)) and not _copy_folder(keeper.path):
        return (f"identical but for the path; the one you filed: the other is in {folder}/, "
                "a folder of copies")
    if _copy_name(runner_up.path) and not _copy_name(keeper.path):
        return ("identical but for the path; the other is named as a copy "
                f"({os.path.basename(runner_up.path)})")
    if keeper.keywords and not runner_up.keywords:
        return "identical but for the path; the one with your keywords"
    if keeper.mtime_ns != runner_up.mtime_ns:
        return "identical but for the path; the oldest file, the others copies of it"
    if len(keeper.path) != len(runner_up.path):
        return "identical but for the path; shortest path"
    return "identical but for the path; first path in order"


def collapse(source: RowSource, ann: AnnIndex, hits: Sequence[Hit], vector: np.ndarray,
             allowed: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD) -> list[Hit]:
    """`hits` with one hit per duplicate group, the group's keeper (which may not have been
    among them), each scored by its own cosine with the query `vector`, best first."""
    groups = groups_around(source, ann, [h.id for h in hits if h.id is not None], threshold, allowed)
    keeper_of = {m.image.id: g.keeper.image for g in groups for m in g.members}
    scores = {h.id: h.score for h in hits}
    # ranked with words (clipsearch.search.wordsearch), a group keeps the place and score of its best
    # member, and what that member matched
    fused = any(h.words is not None for h in hits)
    picked: dict[int, ImageRecord] = {}
    by: dict[int, Hit] = {}
    for hit in hits:
        image = keeper_of.get(hit.id, hit.image)
        if image is not None and image.id not in picked:
            picked[image.id] = image
            by[image.id] = hit
            if fused:
                scores.setdefault(image.id, hit.score)
    missing = np.array(sorted(set(picked) - set(scores)), np.int64)
    if len(missing):
        ids, matrix = _load(source, missing)
        scores |= dict(zip(ids.tolist(), (matrix @ np.asarray(vector, np.float32)).tolist(), strict=True))
    ranked = sorted(picked.values(), key=lambda i: (-scores[i.id], i.id))
    return [Hit(rank=n, path=i.path, score=float(scores[i.id]), id=i.id, image=i,
                clip=by[i.id].clip if fused else None, words=by[i.id].words if fused else None)
            for n, i in enumerate(ranked, 1)]


def paths(groups: Iterable[Group], extras: bool = False) -> list[str]:
    """Every member's path (with `extras`, all but each group's keeper): what `dupes --paths`
    prints. A RAW + JPEG pair's RAW follows its JPEG, unless a kept member uses it too.

    With `extras` nothing is listed that a keeper needs: neither a keeper's own file nor its RAW
    (two renditions of one shot share it), by path or as the same file reached another way (a
    symlinked or bind-mounted alias of a root: same device and inode)."""
    groups = list(groups)
    members = [m for g in groups for m in (g.extras if extras else g.members)]
    listed = [p for m in members for p in (m.image.path, m.original) if p]
    if not extras:
        return listed
    needed = {p for g in groups for p in (g.keeper.image.path, g.keeper.original) if p}
    needed_files = {f for p in needed if (f := _file_of(p)) is not None}
    out: dict[str, None] = {}
    for path in listed:
        if path not in needed and (_file_of(path) or (-1, -1)) not in needed_files:
            out.setdefault(path)
    return list(out)


def _file_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
