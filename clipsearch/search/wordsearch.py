"""A query's words against the photos' words (clipsearch.media.words), ranked with CLIP's answer.

Matching: each query word matches a photo's word that equals it, or, from 3 characters on, one
that starts with it (`2041` finds IMG_2041, `Lisb` finds Lisbon) at half weight; stop words never
match. Photos are scored with BM25 (k1 1.2, b 0.75) over the words of every row, so a word that
most photos carry (a camera everyone has, the root folder's name) counts for little.

Fusion (chosen on the hybrid shapes set, benchmarks/words.py; figures in docs/benchmarks.md): over
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

import bisect
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.media.words import FIELDS, PREFIX_FROM, PREFIX_WEIGHT, SEP, query_tokens, tokens
from clipsearch.results import Hit, ImageRecord

if TYPE_CHECKING:
    from clipsearch.search.query import Term
    from clipsearch.store.ann import AnnIndex
    from clipsearch.store.table import RowSource

K1, B = 1.2, 0.75
FUSION = "scaled"  # the method searches use (see above); "rrf" and "blend" are measured beside it
RRF_K = 60
POOL = 200  # CLIP's candidates
WORD_POOL = 1000  # the word matches' candidates
BLEND_WEIGHT = 2.0
LOOKUP_FROM = 200_000  # words held before a vocabulary is built (it takes 0.4 s at 1.2M words)


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
    """The words of every row of one table version, in id order.

    A query word is found by one prefix comparison over every row's words (5 ms a word at 100k
    photos). An index asked again (a server's) gets a sorted vocabulary with each entry's
    positions, built once per table version in a thread of its own (LOOKUP_FROM entries and
    up), in which a word is two bisections: the same positions, so the same answers to the bit.
    """

    def __init__(self, ids: np.ndarray, words: pa.ListArray) -> None:
        self.ids = ids
        offsets = words.offsets.to_numpy()
        self.offsets = offsets - offsets[0]
        self.values = words.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        self.lengths = np.diff(self.offsets).astype(np.float64)
        self.average = float(self.lengths.mean()) if len(self.lengths) and self.lengths.any() else 1.0
        self._lookup: tuple[list[str], np.ndarray, np.ndarray] | None = None
        self._building = threading.Lock()
        self._thread: threading.Thread | None = None
        self._asked = 0

    @classmethod
    def of(cls, source: RowSource) -> WordIndex | None:
        """The words of `source`, or None for an index from before them."""
        if not source.has_words:
            return None
        table = source.read(["id", "words"])
        ids = table.column("id").to_numpy()
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            table = table.take(pa.array(np.argsort(ids, kind="stable")))
            ids = table.column("id").to_numpy()
        words = table.column("words").combine_chunks()
        return cls(ids, words)

    def __len__(self) -> int:
        return len(self.ids)

    def _build_lookup(self) -> None:
        """The sorted vocabulary, and for each entry the positions in `values` that hold it."""
        encoded = pc.dictionary_encode(self.values)
        order = pc.sort_indices(encoded.dictionary).to_numpy()  # UTF-8 order is code point order
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        codes = rank[encoded.indices.to_numpy()]
        positions = np.argsort(codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(order)))])
        self._lookup = (encoded.dictionary.take(pa.array(order)).to_pylist(), positions, starts)

    def _ask(self) -> None:
        self._asked += 1
        if self._asked == 2 and len(self.values) >= LOOKUP_FROM and self._building.acquire(blocking=False):
            self._thread = threading.Thread(target=self._build_lookup, name="clipsearch-words", daemon=True)
            self._thread.start()

    def settled(self, timeout: float | None = None) -> bool:
        """Whether the vocabulary is built (waiting up to `timeout` for one being built)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._lookup is not None

    def _range(self, key: str) -> tuple[int, int]:
        vocabulary = self._lookup[0]
        return bisect.bisect_left(vocabulary, key), bisect.bisect_left(vocabulary, key + "\U0010ffff")

    def _matches(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `values` of the entries `word` matches, in order, and each one's weight."""
        exact_key = word + SEP
        key = word if len(word) >= PREFIX_FROM else exact_key
        if self._lookup is not None:
            _vocabulary, positions, starts = self._lookup
            (low, high), (exact_low, exact_high) = self._range(key), self._range(exact_key)
            found = np.sort(positions[starts[low]:starts[high]])
            exact = np.isin(found, positions[starts[exact_low]:starts[exact_high]], assume_unique=True)
            return found, np.where(exact, 1.0, PREFIX_WEIGHT)
        found = np.flatnonzero(pc.starts_with(self.values, key).to_numpy(zero_copy_only=False))
        if key == exact_key or not len(found):
            return found, np.ones(len(found))
        exact = pc.starts_with(self.values.take(pa.array(found)), exact_key).to_numpy(zero_copy_only=False)
        return found, np.where(exact, 1.0, PREFIX_WEIGHT)

    def scores(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of every row some word matches: (row positions, scores), both by position."""
        if not len(self) or not words:
            return np.zeros(0, np.int64), np.zeros(0)
        self._ask()
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
        # a word that another one shown begins is not shown again (rocket, not rocket.jpg too)
        return {field: [t for t in found if not any(o != t and t.startswith(o) for o in found)]
                for field, found in out.items()}

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
         index: WordIndex, words: Sequence[str], method: str = FUSION, phrase: Sequence[str] = (),
         ) -> list[Hit] | None:
    """The k best rows for a query's vector and its words, or None when no word matches a row
    the filters allow (the caller then ranks by CLIP alone). `method`: FUSION, or what it was
    measured against: "rrf" (both sides by rank, equal word scores sharing one) and "blend"
    (CLIP's cosine standardised over the candidates, plus BLEND_WEIGHT times BM25 over its best).

    A row's CLIP rank is its rank among the rows the filters allow, counted to POOL; every row
    past it shares rank POOL + 1. So the rows that can make the first k are CLIP's best POOL and,
    among the word matches, those with the k best word scores, equal scores ordered by CLIP:
    only those are scored, and only the k shown are read.

    `phrase`: the query's words in order, which the candidates' captions are scored against
    (clipsearch.enrich.captions); captions re-rank the candidates, they never add one."""
    from clipsearch.enrich import captions

    positions, bm25 = index.scores(words)
    ids = index.ids[positions]
    if allowed is not None and len(ids):
        keep = np.isin(ids, allowed)
        ids, bm25 = ids[keep], bm25[keep]
    stored = source.read_captions() if phrase else None
    phrase = phrase if stored is not None else ()
    if not len(ids) and not phrase:
        return None
    pool_ids, pool_scores = _best(source, ann, vector, max(k, POOL), allowed)
    word_ids, word_scores = _word_candidates(source, ann, vector, ids, bm25, max(k, POOL)) if len(ids) \
        else (np.zeros(0, np.int64), np.zeros(0))
    clip_of = dict(zip(pool_ids.tolist(), pool_scores.tolist(), strict=True))
    clip_of.update(zip(word_ids.tolist(), word_scores.tolist(), strict=True))
    candidates = np.array(sorted(clip_of), np.int64)
    clip = np.array([clip_of[int(i)] for i in candidates])
    clip_rank = np.full(len(candidates), len(pool_ids) + 1.0)
    clip_rank[np.searchsorted(candidates, pool_ids)] = np.arange(1, len(pool_ids) + 1)
    matched = np.isin(candidates, ids)  # ids are in id order, as the index holds them
    share = np.zeros(len(candidates))
    if len(ids):
        share[matched] = bm25[np.searchsorted(ids, candidates[matched])] / bm25.max()
    said, said_words = captions.scores(source, stored, candidates, phrase) if phrase \
        else (np.zeros(len(candidates)), {})
    if not len(ids) and not said.any():
        return None  # neither words nor captions say anything: CLIP's answer, to the bit
    if method == "blend":
        fused = (clip - clip.mean()) / (clip.std() or 1.0) + BLEND_WEIGHT * share
    elif method == "rrf":
        fused = 1.0 / (RRF_K + clip_rank)
        word_rank = np.full(len(candidates), np.inf)
        order = np.lexsort((candidates[matched], -share[matched]))
        word_rank[np.flatnonzero(matched)[order]] = _shared_ranks(share[matched][order])
        fused += np.where(matched, 1.0 / (RRF_K + word_rank), 0.0)
    else:  # "scaled"
        fused = 1.0 / (RRF_K + clip_rank) + share / (RRF_K + 1)
    fused += captions.CAPTION_WEIGHT * said / (RRF_K + 1)
    best = np.lexsort((candidates, -clip, -fused))[:k]
    shown = candidates[best]
    exact = ann.kind != "flat"
    fetched = source.fetch(shown.tolist(), [*source.meta_columns, "vector"] if exact else source.meta_columns)
    if exact:
        cosines = source.matrix(fetched.column("vector")) @ np.asarray(vector, np.float32)
        exact_of = dict(zip(fetched.column("id").to_pylist(), cosines.tolist(), strict=True))
        clip[best] = [exact_of.get(int(i), clip[j]) for i, j in zip(shown, best, strict=True)]
    rows = {r["id"]: ImageRecord.from_row(r) for r in fetched.select(source.meta_columns).to_pylist()}
    hits = []
    for j, id_ in zip(best.tolist(), shown.tolist(), strict=True):
        if id_ not in rows:  # the table moved on since `ann` was built
            continue
        found = index.matched(int(index.positions(np.array([id_]))[0]), words) if matched[j] else {}
        if id_ in said_words:
            found["caption"] = said_words[id_]
        hits.append(Hit(rank=len(hits) + 1, path=rows[id_].path, score=float(fused[j]), clip=float(clip[j]),
                        id=id_, image=rows[id_], words=found))
    return hits


def _best(source: RowSource, ann: AnnIndex, vector: np.ndarray, n: int, among: np.ndarray | None,
          ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cosines) of the n rows of `among` (None: all) most like `vector`, best first, ties
    in id order (IVF's approximate cosines, which fuse makes exact for the hits it returns)."""
    scores, ids = ann.search(vector, n, among)
    if ann.kind != "flat":  # IVF's 8-bit scores rank the candidates; the hits shown get exact ones
        order = np.lexsort((ids, -scores))[:n]
        scores, ids = scores[order], ids[order]
    return ids, scores.astype(np.float64)


def _exact(source: RowSource, ann: AnnIndex, vector: np.ndarray, ids: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cosines) of these rows, from the search structure (IVF: approximate)."""
    found_ids, scores = _best(source, ann, vector, len(ids), np.sort(ids))
    missing = np.setdiff1d(ids, found_ids)  # IVF probes some lists only: what it missed is read
    if not len(missing):
        return found_ids, scores
    rows = source.fetch(missing.tolist(), ["id", "vector"])
    extra = (source.matrix(rows.column("vector")) @ np.asarray(vector, np.float32)).astype(np.float64)
    return np.concatenate([found_ids, rows.column("id").to_numpy()]), np.concatenate([scores, extra])


def _word_candidates(source: RowSource, ann: AnnIndex, vector: np.ndarray, ids: np.ndarray,
                     bm25: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cosines) of the word matches that can rank among the first n: those with the
    n best word scores; of the rows tied at the n-th score, the best by CLIP."""
    if len(ids) <= n:
        return _exact(source, ann, vector, ids)
    cut = np.partition(bm25, len(bm25) - n)[len(bm25) - n]  # the n-th best word score
    above, tied = ids[bm25 > cut], ids[bm25 == cut]
    found = [_exact(source, ann, vector, above)] if len(above) else []
    found.append(_best(source, ann, vector, n - len(above), np.sort(tied)))
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _shared_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of scores sorted best first, equal scores sharing the best rank among them."""
    ranks = np.arange(1, len(scores) + 1, dtype=np.float64)
    if len(scores) > 1:
        same = np.concatenate([[False], scores[1:] == scores[:-1]])
        ranks = np.maximum.accumulate(np.where(same, 0, ranks))
    return ranks
