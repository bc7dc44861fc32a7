"""A query's words against the photos' words (clipsearch.words), ranked with CLIP's answer.

Matching: each query word matches a photo's word that equals it, or, from 3 characters on, one
that starts with it (`2041` finds IMG_2041, `Lisb` finds Lisbon) at half weight; stop words never
match. Photos are scored with BM25 (k1 1.2, b 0.75) over the words of every row, so a word that
most photos carry (a camera everyone has, the root folder's name) counts for little.

Fusion (chosen on the hybrid shapes set, benchmarks/words.py; figures in the README): over
CLIP's best POOL rows and the WORD_POOL best word matches, a photo scores 1 / (60 + its CLIP
rank) plus (its BM25 / the best BM25) / 61: reciprocal rank fusion for CLIP's side, and for the
words' side the share of the best match, which a rank would lose. A photo that matches every
word as well as the best does therefore outranks any photo that matches none (a file name
finds its file first, a place its photos), photos with equal words (all of Lisbon) are ordered
by CLIP, and a photo with both comes first. Plain rank fusion put a weak match (IMG_ alone)
with a good CLIP rank above the file that was asked for (R@1 0.67 against 1.00 on word
queries); a blend of standardised cosines did the same (0.63). When no word of the query
matches any photo the search is CLIP's alone, to the bit.

There is no separate inverted index to keep in step: the `words` column is one flat string array
per snapshot (memory-mapped on the torch-free path, read once per table version elsewhere), and a
query word is one vectorised prefix comparison over it (about 9 ms per word at 100k photos).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.results import Hit, ImageRecord
from clipsearch.snapshot import numpy_of
from clipsearch.words import FIELDS, SEP, query_tokens, tokens

if TYPE_CHECKING:
    from clipsearch.ann import AnnIndex
    from clipsearch.query import Term
    from clipsearch.store import RowSource

K1, B = 1.2, 0.75
FUSION = "scaled"  # the method searches use (see above); "rrf" and "blend" are measured beside it
PREFIX_FROM = 3
PREFIX_WEIGHT = 0.5
RRF_K = 60
POOL = 200  # CLIP's candidates
WORD_POOL = 1000  # the word matches' candidates
BLEND_WEIGHT = 2.0


def query_words(terms: Sequence[Term]) -> list[str]:
    """The words of a parsed query's text terms that can match: those of its positive terms,
    less those of its negative ones (`"a red circle" - "red"` looks for circles by their words)."""
    wanted: list[str] = []
    unwanted: set[str] = set()
    for term in terms:
        if term.kind != "text":
            continue
        words = query_tokens(term.value)
        if term.weight > 0:
            wanted += [w for w in words if w not in wanted]
        else:
            unwanted |= set(words)
    return [w for w in wanted if w not in unwanted]


class WordIndex:
    """The words of every row of one table version, in id order."""

    def __init__(self, ids: np.ndarray, words: pa.ListArray) -> None:
        self.ids = ids
        self.offsets = words.offsets.to_numpy()
        self.values = words.values
        self.lengths = np.diff(self.offsets).astype(np.float64)
        self.average = float(self.lengths.mean()) if len(self.lengths) and self.lengths.any() else 1.0

    @classmethod
    def of(cls, source: RowSource) -> WordIndex | None:
        """The words of `source`, or None for an index from before them."""
        if not source.has_words:
            return None
        table = source.read(["id", "words"])
        ids = numpy_of(table.column("id"))
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            table = table.take(pa.array(np.argsort(ids, kind="stable")))
            ids = numpy_of(table.column("id"))
        words = table.column("words").combine_chunks()
        return cls(ids, words)

    def __len__(self) -> int:
        return len(self.ids)

    def _matches(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `values` of the entries `word` matches, and each one's weight."""
        exact_key = word + SEP
        key = word if len(word) >= PREFIX_FROM else exact_key
        found = np.flatnonzero(pc.starts_with(self.values, key).to_numpy(zero_copy_only=False))
        if key == exact_key or not len(found):
            return found, np.ones(len(found))
        exact = pc.starts_with(self.values.take(pa.array(found)), exact_key).to_numpy(zero_copy_only=False)
        return found, np.where(exact, 1.0, PREFIX_WEIGHT)

    def scores(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of every row some word matches: (row positions, scores), both by position."""
        if not len(self) or not words:
            return np.zeros(0, np.int64), np.zeros(0)
        rows_all, scores_all = [], []
        n = len(self)
        for word in words:
            found, weight = self._matches(word)
            if not len(found):
                continue
            rows = np.searchsorted(self.offsets, found, side="right") - 1
            unique, inverse = np.unique(rows, return_inverse=True)
            tf = np.bincount(inverse, weights=weight)
            idf = np.log(1 + (n - len(unique) + 0.5) / (len(unique) + 0.5))
            norm = K1 * (1 - B + B * self.lengths[unique] / self.average)
            rows_all.append(unique)
            scores_all.append(idf * tf * (K1 + 1) / (tf + norm))
        if not rows_all:
            return np.zeros(0, np.int64), np.zeros(0)
        rows = np.concatenate(rows_all)
        unique, inverse = np.unique(rows, return_inverse=True)
        return unique, np.bincount(inverse, weights=np.concatenate(scores_all))

    def positions(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, ids)

    def matched(self, position: int, words: Sequence[str]) -> dict[str, list[str]]:
        """Field name -> the row's words that the query's `words` matched."""
        out: dict[str, list[str]] = {}
        entries = self.values.slice(int(self.offsets[position]),
                                    int(self.offsets[position + 1] - self.offsets[position])).to_pylist()
        for entry in entries:
            token, _, code = entry.rpartition(SEP)
            if any(token == w or (len(w) >= PREFIX_FROM and token.startswith(w)) for w in words):
                found = out.setdefault(FIELDS.get(code, code), [])
                if token not in found:
                    found.append(token)
        return out

    def having(self, code: str, value: str) -> np.ndarray:
        """Ids of the rows whose words of field `code` start with every word of `value`
        (--place Portugal, --camera "Pixel 7": case-insensitive, by prefix)."""
        keep = np.ones(len(self), bool)
        for word in tokens(value):
            match = pc.and_(pc.starts_with(self.values, word), pc.ends_with(self.values, SEP + code))
            found = np.flatnonzero(match.to_numpy(zero_copy_only=False))
            rows = np.zeros(len(self), bool)
            rows[np.searchsorted(self.offsets, found, side="right") - 1] = True
            keep &= rows
        return self.ids[keep]


def fuse(source: RowSource, ann: AnnIndex, vector: np.ndarray, k: int, allowed: np.ndarray | None,
         index: WordIndex, words: Sequence[str], method: str = FUSION) -> list[Hit] | None:
    """The k best rows for a query's vector and its words, or None when no word matches a row
    the filters allow (the caller then ranks by CLIP alone). `method`: FUSION, or what it was
    measured against: "rrf" (both sides by rank, equal word scores sharing one) and "blend"
    (CLIP's cosine standardised over the candidates, plus BLEND_WEIGHT times BM25 over its best)."""
    from clipsearch.search import nearest

    positions, bm25 = index.scores(words)
    ids = index.ids[positions]
    if allowed is not None and len(ids):
        keep = np.isin(ids, allowed)
        positions, bm25, ids = positions[keep], bm25[keep], ids[keep]
    if not len(ids):
        return None
    by_words = np.lexsort((ids, -bm25))[:WORD_POOL]
    word_ids, word_scores = ids[by_words], bm25[by_words]
    seen = nearest(source, ann, vector, max(k, POOL), allowed)
    image_of = {h.id: h.image for h in seen}
    clip_of = {h.id: h.score for h in seen}
    missing = [int(i) for i in word_ids if int(i) not in clip_of]
    if missing:
        rows = source.fetch(missing, [*source.meta_columns, "vector"])
        scores = source.matrix(rows.column("vector")) @ np.asarray(vector, np.float32)
        for row, score in zip(rows.select(source.meta_columns).to_pylist(), scores.tolist(), strict=True):
            image_of[row["id"]], clip_of[row["id"]] = ImageRecord.from_row(row), float(score)
    candidates = np.array(sorted(clip_of), np.int64)
    clip = np.array([clip_of[int(i)] for i in candidates])
    clip_rank = np.empty(len(candidates))
    clip_rank[np.lexsort((candidates, -clip))] = np.arange(1, len(candidates) + 1)
    at = np.searchsorted(candidates, word_ids)
    if method == "blend":
        fused = (clip - clip.mean()) / (clip.std() or 1.0)
        fused[at] += BLEND_WEIGHT * word_scores / word_scores.max()
    elif method == "rrf":
        fused = 1.0 / (RRF_K + clip_rank)
        fused[at] += 1.0 / (RRF_K + _shared_ranks(word_scores))
    else:  # "scaled"
        fused = 1.0 / (RRF_K + clip_rank)
        fused[at] += word_scores / word_scores.max() / (RRF_K + 1)
    order = np.lexsort((candidates, -fused))[:k]
    matched_at = dict(zip(word_ids.tolist(), range(len(word_ids)), strict=True))
    hits = []
    for rank, j in enumerate(order.tolist(), start=1):
        id_ = int(candidates[j])
        matched = (index.matched(int(index.positions(np.array([id_]))[0]), words)
                   if id_ in matched_at else {})
        hits.append(Hit(rank=rank, path=image_of[id_].path, score=float(fused[j]), clip=clip_of[id_], id=id_,
                        image=image_of[id_], words=matched))
    return hits


def _shared_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of scores sorted best first, equal scores sharing the best rank among them."""
    ranks = np.arange(1, len(scores) + 1, dtype=np.float64)
    if len(scores) > 1:
        same = np.concatenate([[False], scores[1:] == scores[:-1]])
        ranks = np.maximum.accumulate(np.where(same, 0, ranks))
    return ranks
