"""Turning a query vector into ranked hits: filters become an id set applied inside FAISS (so
top-k is top-k of what the filters allow), then rows are looked up."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.config import INDEXED_EXTENSIONS, RAW_EXTENSIONS
from clipsearch.errors import BadInputError
from clipsearch.media.words import tokens
from clipsearch.results import Hit, ImageRecord
from clipsearch.store.ann import AnnIndex
from clipsearch.store.table import RowSource

if TYPE_CHECKING:
    from clipsearch.search.wordsearch import WordIndex

_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")
# Spellings of one format count as one: --ext jpg also finds .jpeg and .JPG.
_SAME_FORMAT = [{"jpg", "jpeg", "jpe", "jfif"}, {"tif", "tiff"}, {"heic", "heif", "hif"}]


@dataclass(frozen=True)
class Filters:
    """Which images a search may return. Dates compare with the EXIF capture time, or with the
    file's modification time (local time) where a photo has none."""

    within: str | None = None  # a folder
    after: datetime | None = None  # taken at or after
    before: datetime | None = None  # taken before
    ext: frozenset[str] = frozenset()  # lower-case extensions without the dot
    tags: frozenset[str] = frozenset()  # every one of these tags (clipsearch tag)
    place: str | None = None  # names a place of the photo's GPS position, by prefix
    camera: str | None = None  # names its camera or lens, by prefix
    kind: str | None = None  # "photo" or "video": one kind only

    @classmethod
    def make(cls, within: str | os.PathLike[str] | None = None, after: str | datetime | None = None,
             before: str | datetime | None = None, ext: str | Iterable[str] | None = None,
             tags: str | Iterable[str] | None = None, *, place: str | None = None,
             camera: str | None = None, kind: str | None = None) -> Filters:
        """Validate user-facing values: dates as YYYY[-MM[-DD[THH:MM[:SS]]]], ext as 'jpg,png'."""
        start, end = parse_date(after, "--after"), parse_date(before, "--before")
        if start and end and start >= end:
            raise BadInputError(f"--after {start:%Y-%m-%d %H:%M} is not before --before "
                                f"{end:%Y-%m-%d %H:%M}; nothing could match")
        wanted = frozenset(t.strip() for t in ([tags] if isinstance(tags, str) else tags or ()) if t.strip())
        for flag, value in (("--place", place), ("--camera", camera)):
            if value is not None and not tokens(value):
                raise BadInputError(f"{flag} {value!r} has no letters or digits to match; give a name, "
                                    f"for example {'Lisbon' if flag == '--place' else 'X100V'}")
        if kind not in (None, "photo", "video"):
            raise BadInputError(f"kind {kind!r} is neither 'photo' nor 'video'")
        return cls(os.fspath(within) if within else None, start, end, parse_extensions(ext), wanted,
                   place or None, camera or None, kind)

    def __bool__(self) -> bool:
        return bool(self.within or self.after or self.before or self.ext or self.tags or self.place
                    or self.camera or self.kind)


# file times are nanoseconds since 1970 in 64 bits: about 1677-09-21 to 2262-04-11
FIRST_YEAR, LAST_YEAR = 1678, 2261


def parse_date(value: str | datetime | None, flag: str) -> datetime | None:
    if value is None:
        return value
    if isinstance(value, datetime):
        parsed = value
    else:
        match = _DATE.match(value.strip())
        try:
            if not match:
                raise ValueError
            y, mo, d, h, mi, s = (int(g) if g else None for g in match.groups())
            parsed = datetime(y, mo or 1, d or 1, h or 0, mi or 0, s or 0)
        except ValueError:
            raise BadInputError(
                f"{flag} {value!r} is not a date; write YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM"
            ) from None
    if not FIRST_YEAR <= parsed.year <= LAST_YEAR:
        raise BadInputError(f"{flag} {value!s}: give a year from {FIRST_YEAR} to {LAST_YEAR} "
                            "(no photo is older or newer)")
    return parsed


def parse_extensions(ext: str | Iterable[str] | None) -> frozenset[str]:
    if not ext:
        return frozenset()
    items = ext.split(",") if isinstance(ext, str) else list(ext)
    known = sorted(e.lstrip(".") for e in INDEXED_EXTENSIONS)
    wanted: set[str] = set()
    for item in (i.strip().lower().lstrip(".") for i in items):
        if not item:
            continue
        if item not in known:
            plain = sorted(e.lstrip(".") for e in INDEXED_EXTENSIONS - RAW_EXTENSIONS)
            raise BadInputError(f"--ext {item!r} is not a file type clipsearch indexes; choose "
                                f"from: {', '.join(plain)}, or a RAW format LibRaw reads (cr2, cr3, "
                                f"nef, arw, raf, dng, orf, rw2 ... {len(RAW_EXTENSIONS)} in all)")
        wanted |= next((group for group in _SAME_FORMAT if item in group), {item})
    return frozenset(wanted)


def allowed_ids(store: RowSource, filters: Filters, words: WordIndex | None = None) -> np.ndarray | None:
    """Ids of the rows `filters` allow, or None when nothing is filtered; `words`: the rows'
    words, for --place and --camera (read here when not given)."""
    if not filters:
        return None
    columns = ["id", "path"] + (["taken", "mtime_ns"] if filters.after or filters.before else []) + (
        ["hash"] if filters.tags else []) + (["t"] if filters.kind and store.has_video else [])
    table = store.read(columns)
    mask = pa.array(np.ones(table.num_rows, bool))
    paths = table.column("path")
    if filters.within:
        mask = pc.and_(mask, pc.starts_with(paths, _folder_prefix(filters.within)))
    if filters.ext:
        lowered = pc.utf8_lower(paths)
        by_ext = [pc.ends_with(lowered, "." + e) for e in sorted(filters.ext)]
        mask = pc.and_(mask, _any(by_ext))
    for bound, keep_after in ((filters.after, True), (filters.before, False)):
        if bound is not None:
            mask = pc.and_(mask, _date_mask(table, bound, keep_after))
    if filters.kind:
        photo = pc.is_null(table.column("t")) if "t" in table.column_names else pa.array(
            np.ones(table.num_rows, bool))
        mask = pc.and_(mask, photo if filters.kind == "photo" else pc.invert(photo))
    if filters.tags:
        mask = pc.and_(mask, pc.is_in(table.column("hash"), value_set=tagged_hashes(store, filters.tags)))
    if filters.place or filters.camera:
        from clipsearch.search.wordsearch import WordIndex

        words = words or WordIndex.of(store)
        if words is None:
            raise BadInputError("--place and --camera need the photos' words, which this index does not "
                                "have yet; run: clipsearch index (it adds them without embedding again)")
        for code, value in (("p", filters.place), ("c", filters.camera)):
            if value:
                having = pa.array(words.having(code, value))
                mask = pc.and_(mask, pc.is_in(table.column("id"), value_set=having))
    return table.column("id").filter(mask).to_numpy()


def tagged_hashes(store: RowSource, tags: frozenset[str]) -> pa.Array:
    """Content hashes carrying every tag in `tags` (case-insensitive, as --place and --camera are;
    a label the index holds exactly wins); unknown tags are refused, naming those that exist."""
    stored = store.read_tags()
    if stored is None:
        raise BadInputError("--tag: this index has no tags yet; run: clipsearch tag")
    rows, label_set = stored
    known = list(label_set.get("prompts", {}))
    folded: dict[str, list[str]] = {}
    for label in known:
        folded.setdefault(label.casefold(), []).append(label)
    chosen = set()
    for tag in sorted(tags):
        same = [tag] if tag in known else folded.get(tag.casefold(), [])
        if len(same) != 1:
            raise BadInputError(f"--tag {tag!r} is not a tag in this index; tags: {', '.join(known)}")
        chosen.add(same[0])
    wanted = rows.filter(pc.is_in(rows.column("label"), value_set=pa.array(sorted(chosen), pa.string())))
    counts = wanted.group_by("hash").aggregate([("label", "count_distinct")])
    every = counts.filter(pc.equal(counts.column("label_count_distinct"), len(chosen)))
    return every.column("hash").combine_chunks()


def _folder_prefix(folder: str) -> str:
    path = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(path):
        raise BadInputError(f"--in: folder not found: {path}")
    return path.rstrip(os.sep) + os.sep


def _any(masks: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    out = masks[0]
    for m in masks[1:]:
        out = pc.or_(out, m)
    return out


def _date_mask(table: pa.Table, bound: datetime, keep_after: bool) -> pa.ChunkedArray:
    taken = table.column("taken")
    # EXIF times are local wall-clock strings in one ISO shape, so they compare as text;
    # file times are instants, compared with the bound read as local time.
    iso, ns = bound.isoformat(timespec="seconds"), int(bound.timestamp() * 1e9)
    if keep_after:
        by_taken, by_mtime = pc.greater_equal(taken, iso), pc.greater_equal(table.column("mtime_ns"), ns)
    else:
        by_taken, by_mtime = pc.less(taken, iso), pc.less(table.column("mtime_ns"), ns)
    return pc.if_else(pc.is_null(taken), by_mtime, by_taken)


def nearest(
    store: RowSource, ann: AnnIndex, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> list[Hit]:
    """The k best rows for a query vector, best first, scored by exact cosine, each with its row."""
    if k < 1:
        raise BadInputError(f"-k must be at least 1, not {k}")
    exact = ann.kind == "flat"
    # IVF compares 8-bit vectors: take more candidates than asked, re-score them exactly
    scores, ids = ann.search(vector, k if exact else 2 * k + 10, allowed)
    if not len(ids):
        return []
    columns = store.meta_columns
    rows = store.fetch(ids.tolist(), columns if exact else [*columns, "vector"])
    # an id missing from the table means the table moved on since `ann` was built
    image_of = {r["id"]: ImageRecord.from_row(r) for r in rows.select(columns).to_pylist()}
    if not exact:
        # in id order, so that every row source feeds BLAS the same matrix: a row's dot product
        # can differ in its last bit with its place in the matrix
        rows = rows.sort_by("id")
        ids = rows.column("id").to_numpy()
        scores = store.matrix(rows.column("vector")) @ np.asarray(vector, np.float32)
        order = np.lexsort((ids, -scores))  # ties in id order, as FAISS breaks them
        scores, ids = scores[order], ids[order]
    hits = []
    for score, id_ in zip(scores.tolist(), ids.tolist(), strict=True):
        if id_ in image_of and len(hits) < k:
            image = image_of[id_]
            hits.append(Hit(rank=len(hits) + 1, path=image.path, score=float(score), id=id_, image=image))
    return hits
