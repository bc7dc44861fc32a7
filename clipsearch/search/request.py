"""One search, as every door states it: the CLI and the Python API build a SearchRequest, the
client sends it to a running server as the API's query (`params`), the API builds one from that
query, and the engine answers it (clipsearch.search.engine.Index.page). Light: the client, on the
way of a query through a server, imports it without numpy or torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipsearch.errors import BadInputError
from clipsearch.search import limits

if TYPE_CHECKING:
    from datetime import datetime

    from clipsearch.search.nearest import Filters


@dataclass(frozen=True)
class ImageData:
    """An image that is not a file here, such as an upload: its bytes, and a name for messages."""

    data: bytes
    name: str = "the uploaded image"


@dataclass(frozen=True)
class SearchRequest:
    """What to find and how: a `query` in the query language (clipsearch.search.query), or images
    `like` one (a file here or anywhere, an indexed row's id, or an image's bytes); the page (`k`
    hits from rank `offset + 1` on); the filters; and, for a query, how it ranks.

    Filters: `within` a folder, taken `after`/`before` a date (YYYY[-MM[-DD[THH:MM]]]), file
    extension(s) `ext`, `tags` (every one of them, from `tag`), a `place` and a `camera`
    (case-insensitive, by prefix: "Portugal", "pixel 7"), one `kind` ("photo" or "video").
    Ranking: the query's words also match each photo's own (clipsearch.search.wordsearch),
    `words=False` ranks by pixels only; `rerank` re-orders the top `candidates` with BLIP;
    `min_match` (implies `rerank`) drops hits whose BLIP match probability is below it;
    `collapse` returns one hit per group of duplicate photos, its keeper. `image_terms=False`
    refuses query terms that name image files (a server must not open paths its clients send);
    `literal=True` takes the whole query as one text, not the query language (a dataset's caption).
    `details`: the hits' rows carry their tags, and `motion` says whether a Live Photo's video
    plays (the API's pages show both; the CLI's do not, so they skip the reads).
    """

    query: str | None = None
    like: str | os.PathLike[str] | int | ImageData | None = None
    k: int = 10
    offset: int = 0
    within: str | os.PathLike[str] | None = None
    after: str | datetime | None = None
    before: str | datetime | None = None
    ext: str | Sequence[str] | None = None
    tags: str | Sequence[str] | None = None
    place: str | None = None
    camera: str | None = None
    kind: str | None = None
    words: bool = True
    rerank: bool = False
    candidates: int | None = None
    min_match: float | None = None
    collapse: bool = False
    image_terms: bool = True
    literal: bool = False
    details: bool = False  # each hit's tags and Live Photo motion too, as the API shows them

    def __post_init__(self) -> None:
        if (self.query is None) == (self.like is None):
            raise BadInputError("a search needs either a query or an image to look like, not "
                                f"{'both' if self.query is not None else 'neither'}")
        if self.like is not None and (self.reranked or self.collapse or self.literal):
            raise BadInputError("re-ranking, --min-match and --collapse take a text query; a search "
                                "for images like one has none")

    @property
    def reranked(self) -> bool:
        return self.rerank or self.min_match is not None

    @property
    def tag_list(self) -> list[str]:
        return [self.tags] if isinstance(self.tags, str) else list(self.tags or ())

    def breach(self) -> str | None:
        """Why a server would refuse this (clipsearch.search.limits), or None."""
        return limits.breach(k=self.k, offset=self.offset, query=self.query, tags=self.tag_list,
                             rerank=self.reranked, candidates=self.candidates)

    def filters(self) -> Filters:
        """The filters, checked (a bad date or extension raises its one-line error)."""
        from clipsearch.search.nearest import Filters

        return Filters.make(self.within, self.after, self.before, self.ext, self.tags,
                            place=self.place, camera=self.camera, kind=self.kind)

    def params(self) -> dict:
        """The API's query parameters for this request (GET /api/search, /api/similar): the names
        of `asked` and `search` in clipsearch.server.app. A folder is sent as the absolute path
        it means here, since the server runs elsewhere."""
        params: dict = {"k": str(self.k)}
        if self.offset:
            params["offset"] = str(self.offset)
        if self.within:
            params["in"] = os.path.abspath(os.path.expanduser(self.within))
        for key, value in (("after", self.after), ("before", self.before)):
            if value is not None:
                params[key] = value if isinstance(value, str) else value.isoformat(timespec="minutes")
        if self.ext is not None:
            params["ext"] = self.ext if isinstance(self.ext, str) else ",".join(self.ext)
        if self.tags:
            params["tag"] = self.tag_list
        params |= {key: value for key, value in (("place", self.place), ("camera", self.camera),
                                                 ("kind", self.kind)) if value}
        if self.query is None:
            return params
        params["q"] = self.query
        if not self.words:
            params["words"] = "0"
        if self.rerank:
            params["rerank"] = "1"
        if self.candidates is not None:
            params["candidates"] = str(self.candidates)
        if self.min_match is not None:
            params["min_match"] = repr(float(self.min_match))
        if self.collapse:
            params["collapse"] = "1"
        return params
