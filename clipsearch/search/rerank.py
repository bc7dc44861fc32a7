"""Second stage of a search: BLIP's image-text-matching head reads the query together with each
CLIP candidate and says how likely they match.

Fused score = ITM probability + CLIP cosine. The BLIP paper ranks its top-k ITC candidates by
ITM plus ITC; we keep that sum but use the ITM *probability* (0-1) so the score stays bounded and
`--min-match` has a meaning. A confident ITM difference (tenths) outweighs the CLIP spread among
top candidates (hundredths), while between candidates BLIP finds equally likely (both ~0.99,
or both ~0 when nothing matches) the CLIP cosine decides, which a probability alone could not.

A composed query's ITM probability is that of the image showing every '+' text term and none of
the '-' ones, terms taken as independent: prod p_i^w_i * prod (1 - p_j)^w_j. For one plain
query that is just its ITM probability; image terms steer only the CLIP stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from clipsearch.errors import BadInputError, UnreadableImageError
from clipsearch.media.images import content_hash, decode, identity, read_file
from clipsearch.results import Hit
from clipsearch.search.query import Term

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipsearch.models.blip import ItmScorer
    from clipsearch.store.featcache import FeatureCache


def check_terms(terms: Sequence[Term]) -> list[Term]:
    """The text terms BLIP can read; a query made only of images cannot be re-ranked."""
    texts = [t for t in terms if t.kind == "text"]
    if not any(t.weight > 0 for t in texts):
        raise BadInputError("--rerank and --min-match need a text term to read, e.g. "
                            "'~/ref.jpg + \"at sunset\"'; image-only queries rank by CLIP alone")
    return texts


class _Candidate(NamedTuple):
    path: str
    key: str  # content hash of the bytes read now
    cached: torch.Tensor | None
    image: Image.Image | None  # decoded only when not cached


def candidate_features(scorer: ItmScorer, cache: FeatureCache, paths: Sequence[str],
                       workers: int = 2, batch_size: int = 8, times: Sequence[float | None] = (),
                       ) -> dict[str, torch.Tensor]:
    """BLIP vision features for each readable path, from the cache or computed (and cached).

    Keys are content hashes of the bytes read now, so an edited photo is never matched with the
    features of its old pixels. A file that vanished or no longer decodes is left out. `times`:
    for a video's path, the second whose frame stands for it (keyed by the file's size and mtime
    and that second: hashing a whole video per query would cost more than the model).
    """
    at = dict(zip(paths, times, strict=False))

    def load(path: str) -> _Candidate | None:
        try:
            if at.get(path) is not None:
                from clipsearch.media.video import frame_at

                st = os.stat(path)
                key = content_hash(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{at[path]:.3f}".encode())
                cached = cache.get(key)
                image = None if cached is not None else frame_at(path, at[path], scorer.decode_min_side)
                return _Candidate(path, key, cached, image)
            data = read_file(path)
            key = identity(path, data)
            cached = cache.get(key)
            image = None if cached is not None else decode(data, path, scorer.decode_min_side).image
            return _Candidate(path, key, cached, image)
        except (UnreadableImageError, OSError):
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        loaded = [c for c in pool.map(load, paths) if c is not None]
    features = {c.path: c.cached for c in loaded if c.cached is not None}
    missing = [c for c in loaded if c.cached is None]
    if missing:
        computed = scorer.image_features([c.image for c in missing], batch_size)
        cache.put({c.key: f for c, f in zip(missing, computed, strict=True)})
        features.update({c.path: f for c, f in zip(missing, computed, strict=True)})
    return features


def match_probability(scorer: ItmScorer, texts: Sequence[Term],
                      features: Sequence[torch.Tensor], batch_size: int = 32) -> np.ndarray:
    itm = np.ones(len(features), np.float64)
    for term in texts:
        p = scorer.match(term.value, features, batch_size).astype(np.float64)
        itm *= p ** term.weight if term.weight > 0 else (1.0 - p) ** -term.weight
    return itm


def rerank(hits: Sequence[Hit], texts: Sequence[Term], scorer: ItmScorer, cache: FeatureCache,
           k: int, min_match: float | None = None, workers: int = 2) -> list[Hit]:
    """The top `k` of `hits` by fused score, dropping those whose ITM probability < `min_match`."""
    features = candidate_features(scorer, cache, [h.path for h in hits], workers, times=[h.t for h in hits])
    kept = [h for h in hits if h.path in features]
    if not kept:
        return []
    itm = match_probability(scorer, texts, [features[h.path] for h in kept])
    # candidates fused with the photos' words (clipsearch.search.wordsearch) carry their CLIP cosine
    # beside the fused score; the words chose the candidates, BLIP and CLIP order them
    scored = [
        replace(h, score=float(p) + clip, itm=float(p), clip=clip)
        for h, p in zip(kept, itm, strict=True)
        if min_match is None or p >= min_match
        for clip in [h.clip if h.words is not None and h.clip is not None else h.score]
    ]
    scored.sort(key=lambda h: (-h.score, h.rank))  # ties keep the first stage's order
    return [replace(h, rank=i) for i, h in enumerate(scored[:k], start=1)]
