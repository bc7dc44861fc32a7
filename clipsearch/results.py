"""The dataclasses the library returns; the CLI renders them, the Python API hands them out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Hit:
    """One search result; higher `score` is better. Without re-ranking `score` is the CLIP cosine
    similarity; re-ranked, it is the fused score `itm + clip` (see clipsearch.rerank)."""

    rank: int
    path: str
    score: float
    itm: float | None = None  # BLIP's probability that image and query match, when re-ranked
    clip: float | None = None  # the first-stage CLIP cosine, when re-ranked

    def to_dict(self) -> dict:
        out = {"path": self.path, "score": self.score, "rank": self.rank}
        if self.itm is not None:
            out |= {"itm": self.itm, "clip": self.clip}
        return out


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (the reason says what to do about it)."""

    path: str
    reason: str


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


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


    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """Reported through the indexer's callback. `phase` is 'scan', 'embed' or 'finish'."""

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
    images: list[ImageTags]
    sidecars_written: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # sidecars that could not be merged
    seconds: float = 0.0

    @property
    def untagged(self) -> int:
        return sum(1 for i in self.images if not i.tags)


@dataclass(frozen=True)
class TagCount:
    label: str
    images: int

    def to_dict(self) -> dict:
        return asdict(self)
