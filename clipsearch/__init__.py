"""clipsearch: local semantic photo search with CLIP.

    >>> import clipsearch
    >>> clipsearch.index_folders(["~/Photos"])
    >>> index = clipsearch.open_index()
    >>> for hit in index.search("a dog running on a beach", k=5):
    ...     print(hit.rank, hit.score, hit.path)

Heavy libraries load on first use, so importing clipsearch is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipsearch.errors import ClipsearchError
from clipsearch.results import (
    CaptionSummary,
    Hit,
    ImageTags,
    IndexInfo,
    IndexSummary,
    Progress,
    Skipped,
    TagCount,
    TagSummary,
)
from clipsearch.search.request import SearchRequest

__version__ = "0.1.0"
__all__ = [
    "CaptionSummary", "ClipsearchError", "Hit", "ImageTags", "Index", "IndexInfo", "IndexSummary", "Progress",
    "SearchRequest", "Skipped", "TagCount", "TagSummary", "index_folders", "open_builder", "open_index",
]

if TYPE_CHECKING:
    from clipsearch.build.builder import index_folders, open_builder
    from clipsearch.search.engine import Index, open_index


def __getattr__(name: str):
    if name in ("index_folders", "open_builder"):
        from clipsearch.build import builder as build

        return getattr(build, name)
    if name in ("Index", "open_index"):
        from clipsearch.search import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
