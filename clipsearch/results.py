"""The dataclasses the library returns; the CLI renders them, the Python API hands them out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Hit:
    """One search result; higher `score` is better. Without re-ranking `score` is the CLIP cosine
    similarity; re-ranked, it is the fused score `itm + clip` (see clipsearch.search.rerank)."""

    rank: int
    path: str
    score: float
    itm: float | None = None  # BLIP's probability that image and query match, when re-ranked
    clip: float | None = None  # the first-stage CLIP cosine, when re-ranked
    id: int | None = None  # the row's id: stable for this content at this path (see ImageRecord)
    image: ImageRecord | None = None  # the row itself (without tags; Index.tagged adds them)
    # when the query's words matched the photo's (clipsearch.search.wordsearch): field -> the photo's
    # words that matched; `score` is then the fused score and `clip` the CLIP cosine
    words: dict[str, list[str]] | None = None
    caption: str | None = None  # the photo's BLIP caption (clipsearch.enrich.captions), once made
    # a video's hit (clipsearch.media.video): the second of its best moment, and its best moments
    # (second, score), best first; None for a photo
    t: float | None = None
    moments: list[tuple[float, float]] | None = None
    # a RAW + JPEG pair's RAW (clipsearch.media.scan.originals_of): the hit is shown through `path`,
    # the JPEG; None for a photo without one
    original: str | None = None
    motion: bool = False  # a Live Photo whose video plays (asked for with SearchRequest.details)

    @property
    def kind(self) -> str:
        return "photo" if self.t is None else "video"

    def to_dict(self) -> dict:
        """The CLI's JSON form of a hit."""
        out = {"path": self.path, "score": self.score, "rank": self.rank, "kind": self.kind}
        if self.t is not None:
            out |= {"t": self.t, "moments": [{"t": t, "score": s} for t, s in self.moments or []]}
        if self.itm is not None or self.words is not None:
            out |= {"itm": self.itm, "clip": self.clip} if self.itm is not None else {"clip": self.clip}
        if self.words is not None:
            out["words"] = self.words
        if self.caption is not None:
            out["caption"] = self.caption
        if self.original is not None:
            out["original"] = self.original
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Hit:
        """A hit from its JSON form (the server's hits carry more fields, which are ignored)."""
        return cls(rank=int(data["rank"]), path=str(data["path"]), score=float(data["score"]),
                   itm=data.get("itm"), clip=data.get("clip"), id=data.get("id"), words=data.get("words"),
                   caption=data.get("caption"), t=data.get("t"), original=data.get("original"),
                   moments=[(m["t"], m["score"]) for m in data["moments"]] if data.get("moments") else None)


@dataclass(frozen=True)
class Page:
    """One page of a search: the hits from rank `offset + 1` on, how many images the filters let
    the search rank (`considered`), and where the time went, in milliseconds."""

    hits: list[Hit]
    considered: int
    timing_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRecord:
    """What the index knows about one image. A row's id never changes and is never reused: an
    edited file gets a new row and id, so an id always stands for the same content."""

    id: int
    path: str
    bytes: int
    width: int | None
    height: int | None
    taken: str | None  # EXIF capture time as the camera wrote it, or None
    mtime_ns: int
    hash: str  # BLAKE2b of the content
    tags: list[str] = field(default_factory=list)  # best first
    # what the photo says beyond its pixels (clipsearch.media.words); None in an index not yet upgraded
    camera: str | None = None
    lens: str | None = None
    place: str | None = None  # city, region, country
    near: str | None = None  # the nearest named place, a quarter of the city (only `about` fills it)
    lat: float | None = None
    lon: float | None = None
    keywords: list[str] = field(default_factory=list)  # the user's, from the file and its sidecar
    people: list[str] = field(default_factory=list)
    caption: str | None = None  # BLIP's sentence for it (clipsearch.enrich.captions), once captioned
    t: float | None = None  # a video's frame: its second (clipsearch.media.video); None for a photo
    duration: float | None = None  # the video's, in seconds

    @classmethod
    def from_row(cls, row: dict, tags: list[str] | None = None) -> ImageRecord:
        """From a row of the image table (clipsearch.store.table.META_COLUMNS, and the word columns
        where it has them)."""
        return cls(id=row["id"], path=row["path"], bytes=row["size"], width=row["width"],
                   height=row["height"], taken=row["taken"], mtime_ns=row["mtime_ns"], hash=row["hash"],
                   tags=list(tags or []), camera=row.get("camera"), lens=row.get("lens"),
                   place=row.get("place"), lat=row.get("lat"), lon=row.get("lon"),
                   keywords=list(row.get("keywords") or []), people=list(row.get("people") or []),
                   t=row.get("t"), duration=row.get("duration"))

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["near"] is None:  # only `about` looks the quarter up: elsewhere not unknown, not asked
            del out["near"]
        return out


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (the reason says what to do about it)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Unwritten:
    """A file that makes searches fast (`what`: the text encoder export, the row snapshot, the
    search structure) that could not be written; the index is intact and searches work without
    it, only slower. `needs_bytes`: about how much free space writing it takes."""

    what: str
    path: str
    needs_bytes: int
    reason: str


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    frames: int = 0  # of the videos embedded (clipsearch.media.video), each a row
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    sidecars_written: int = 0  # XMP sidecars of new photos, after `tag --write-xmp`
    unwritten: list[Unwritten] = field(default_factory=list)  # fast-search files it could not write
    offline: dict[str, str] = field(default_factory=dict)  # root -> why its rows were kept
    # metadata left unread (bad EXIF, XMP that is not XML ...): the photo is indexed all the same
    metadata_notes: list[Skipped] = field(default_factory=list)
    words_filled: int = 0  # rows of an older index given their words (clipsearch.media.words)
    empty: list[str] = field(default_factory=list)  # folders given that hold nothing: not kept as roots
    unlisted: int = 0  # of the skipped, those the scan could not open (not among the images found)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexSummary:
        """The summary of a run done elsewhere (a server's job), from its `to_dict`."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "skipped": [Skipped(**s) for s in data.get("skipped", [])],
                      "unwritten": [Unwritten(**u) for u in data.get("unwritten", [])],
                      "metadata_notes": [Skipped(**s) for s in data.get("metadata_notes", [])]})


@dataclass
class ForgetSummary:
    """What `clipsearch forget` removed: rows, and the cached files of content no row holds now."""

    removed: int = 0
    cache_files: int = 0
    on_disk: list[str] = field(default_factory=list)  # forgotten photos whose files are still there

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CompactSummary:
    """What `clipsearch optimize` did: the index folder's size before and after, and the time."""

    db: str
    bytes_before: int
    bytes_after: int
    seconds: float


@dataclass(frozen=True)
class IndexInfo:
    db: str
    images: int
    roots: list[str]
    model: str
    pretrained: str | None
    dim: int
    bytes: int
    ann: str
    labels: list[str] = field(default_factory=list)  # those of the last `tag` run
    offline: dict[str, str] = field(default_factory=dict)  # root -> since when (ISO time)
    captioned: int = 0  # photos with a BLIP caption (clipsearch caption)
    caption_models: list[str] = field(default_factory=list)  # what wrote them
    videos: int = 0  # of the `images` (clipsearch.media.video)
    frames: int = 0  # the videos' rows: the moments a search ranks
    exclude: list[str] = field(default_factory=list)  # --exclude patterns every run leaves out


    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """Reported through the indexer's callback. `phase` is 'scan', 'embed', 'finish', or
    'prepare' (the text encoder is being exported for fast searches, once per model)."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ImageTags:
    """The tags one image received, best first, as (label, score) pairs."""

    path: str
    tags: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return {"path": self.path, "tags": [{"label": label, "score": score} for label, score in self.tags]}


@dataclass
class TagSummary:
    labels: list[str]
    images: list[ImageTags]  # each image's tags; empty when not asked for (Builder.tag per_image)
    sidecars_written: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # sidecars that could not be merged
    seconds: float = 0.0
    scored: int = 0  # images tagged, whether or not `images` lists them
    untagged: int = 0  # of those, how many fit no label

    def to_dict(self) -> dict:
        return {**asdict(self), "images": [i.to_dict() for i in self.images]}

    @classmethod
    def from_dict(cls, data: dict) -> TagSummary:
        images = [ImageTags(i["path"], [(t["label"], t["score"]) for t in i["tags"]]) for i in data["images"]]
        return cls(data["labels"], images, data["sidecars_written"], [Skipped(**s) for s in data["skipped"]],
                   data["seconds"], data["scored"], data["untagged"])


@dataclass
class CaptionSummary:
    """What a `caption` run did: photos (contents) captioned, those it could not read and why,
    how many of those it found had a stale caption (another model or precision), and how many
    are left for a later run (`limit`)."""

    model: str
    precision: str
    captioned: int = 0
    stale: int = 0
    left: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    sidecars_written: int = 0  # XMP descriptions, when sidecars were asked for

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaptionSummary:
        return cls(**{**data, "skipped": [Skipped(**s) for s in data.get("skipped", [])]})


@dataclass(frozen=True)
class TagCount:
    label: str
    images: int

    def to_dict(self) -> dict:
        return asdict(self)
