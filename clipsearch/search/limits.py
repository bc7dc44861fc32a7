"""How much one request to `clipsearch serve` may ask for. The server refuses more with these
messages; the CLI checks the same limits first and answers bigger asks in-process, so what it
prints never depends on whether a server runs."""

from __future__ import annotations

from collections.abc import Sequence

MAX_QUERY = 1000  # characters
MAX_RANK = 1000  # k + offset: how deep pages reach
MAX_RERANKED = 200  # k + offset, and candidates, when re-ranking: each costs BLIP a pass
MAX_TAGS = 16
MAX_TAG_LENGTH = 200
MAX_UPLOAD = 25 * 1024 * 1024  # bytes


def breach(*, k: int, offset: int = 0, query: str | None = None, tags: Sequence[str] | None = None,
           rerank: bool = False, candidates: int | None = None) -> str | None:
    """Why this ask is beyond a server's limits, or None when it is within them."""
    if query is not None and len(query) > MAX_QUERY:
        return f"the query is {len(query)} characters long; at most {MAX_QUERY} are read"
    deepest = MAX_RERANKED if rerank else MAX_RANK
    if k + offset > deepest:
        what = "re-ranked pages" if rerank else "pages"
        return (f"k + offset is {k + offset}, but {what} reach at most rank {deepest}; narrow the "
                "search with filters instead")
    if rerank and candidates is not None and candidates > MAX_RERANKED:
        return f"--candidates {candidates} is more than the {MAX_RERANKED} a server re-ranks"
    if tags and len(tags) > MAX_TAGS:
        return f"{len(tags)} tags given; at most {MAX_TAGS} may be required at once"
    if tags and any(len(t) > MAX_TAG_LENGTH for t in tags):
        return f"a tag is longer than {MAX_TAG_LENGTH} characters; tags are short labels such as 'beach'"
    return None
