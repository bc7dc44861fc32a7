"""BLIP captions: a sentence for every indexed photo, made after it is indexed (it is searchable by
CLIP from its commit on), stored per content hash with the model and precision that wrote it, and
searched as words beside CLIP.

Making them (`caption_store`): the photos whose content has no caption, or one written by another
model or precision (stale: shown and searched until replaced, never dropped), are read, checked
against the hash they were indexed with, decoded and captioned in batches; captions are committed
every COMMIT_SECONDS and when the run ends or is interrupted, so a run resumes where the last one
stopped, whether it ended by Ctrl-C or kill -9.

Searching them (`score`): almost every query shares a word with some caption, so captions only
re-rank the candidates that CLIP and the photos' own words (clipsearch.search.wordsearch) chose; they
never bring in a photo of their own, and a pixels-only query (`--words off`) never reads them. A
candidate's caption scores the share of the query's words it holds (a prefix from 3 characters
counts half, as words do) and the share of the query's adjacent word pairs it holds in that order
("red circle" is not "circle ... red"): bag-of-words matching cannot tell "a red circle left of a
blue square" from its twins, the pairs can. The score is added to the fused score at
CAPTION_WEIGHT times a best word match's, set by measurement on the shapes task (docs/guides/captions.md).
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.errors import IndexInterrupted, UnreadableImageError
from clipsearch.media.images import decode, identity, read_file
from clipsearch.media.words import PREFIX_FROM, PREFIX_WEIGHT, STOP_WORDS, WORD
from clipsearch.results import CaptionSummary, Progress, Skipped
from clipsearch.store.table import CAPTIONS_SCHEMA, under_sql

if TYPE_CHECKING:
    from clipsearch.models.captioner import Captioner
    from clipsearch.search.query import Term
    from clipsearch.store.table import RowSource, Store

DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
COMMIT_SECONDS = 5.0
# held-out twin-confusable R@1 on the shapes task (docs/guides/captions.md): 0.969 at 0.05 with
# each of three captioners, 0.938 without captions, 0.906 at 0.1, where a wrong caption beats CLIP
CAPTION_WEIGHT = 0.05


# -- making them ---------------------------------------------------------------------------------
def pending(store: Store, identity: str, folders: Sequence[str] = (), leave_out: Iterable[str] = (),
            ) -> tuple[list[tuple[str, list[str]]], int]:
    """(the contents to caption, in id order, each with the paths that hold it; how many of them
    hold a stale caption) for the rows under `folders` (all rows when empty), but for the hashes
    to `leave_out`."""
    video = ["t"] if store.has_video else []
    where = under_sql(list(folders)) if folders else None
    rows = store.read(["id", "path", "hash", *video], where).sort_by("id")
    if video:  # BLIP captions photos; a video's moments are found by CLIP
        rows = rows.filter(pc.is_null(rows.column("t")))
    stored = store.read_captions()
    fresh: set[str] = set(leave_out)
    stale: set[str] = set()
    if stored is not None:
        same = pc.equal(stored.column("identity"), identity).to_pylist()
        for h, ok in zip(stored.column("hash").to_pylist(), same, strict=True):
            (fresh if ok else stale).add(h)
    todo: dict[str, list[str]] = {}
    for path, h in zip(rows.column("path").to_pylist(), rows.column("hash").to_pylist(), strict=True):
        if h not in fresh:
            todo.setdefault(h, []).append(path)
    return list(todo.items()), sum(h in stale for h in todo)


def caption_store(store: Store, captioner: Captioner, folders: Sequence[str] = (), limit: int | None = None,
                  progress: Callable[[Progress], None] | None = None, batch_size: int = 8, workers: int = 2,
                  commit_seconds: float = COMMIT_SECONDS, call=lambda work: work(),
                  failed: set[str] | None = None) -> tuple[CaptionSummary, list[tuple[str, str]]]:
    """Caption the photos under `folders` (every indexed photo when empty) that have no caption
    from this captioner yet, at most `limit` of them: the summary, and each captioned path with
    its caption. The caller holds the writer's lock. `failed`: hashes not to try (a server's
    quiet-time captioning keeps the unreadable ones there, so they are not read every turn), to
    which this run adds its own."""
    todo, stale = pending(store, captioner.identity, folders, failed or ())
    summary = CaptionSummary(model=captioner.name, precision=captioner.precision, stale=stale)
    if limit is not None:
        summary.left = max(0, len(todo) - limit)
        todo = todo[:limit]
    written = caption_hashes(store, captioner, todo, summary, progress, batch_size, workers, commit_seconds,
                             call)
    if failed is not None:
        done = {p for p, _ in written}
        failed |= {h for h, paths in todo if not done & set(paths)}
    return summary, written


def lower_priority() -> None:
    """Make the calling thread (and the threads it starts: torch's OpenMP team) yield the CPU to
    everything else: a server's searches come first, its captions take what is left."""
    import contextlib
    import threading

    with contextlib.suppress(AttributeError, OSError):  # Linux: nice is per thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def caption_hashes(store: Store, captioner: Captioner, todo: Sequence[tuple[str, list[str]]],
                   summary: CaptionSummary | None = None, progress: Callable[[Progress], None] | None = None,
                   batch_size: int = 8, workers: int = 2, commit_seconds: float = COMMIT_SECONDS,
                   call: Callable[[Callable[[], list[str]]], list[str]] = lambda work: work(),
                   ) -> list[tuple[str, str]]:
    """Caption each content of `todo` (hash, the paths holding it) and store the captions,
    committing every `commit_seconds` and when interrupted (IndexInterrupted); each captioned
    path with its caption. `call(work)` runs each batch's model work (a server runs it on a
    thread of low priority)."""
    started = time.perf_counter()
    summary = summary or CaptionSummary(model=captioner.name, precision=captioner.precision)
    total = len(todo)
    done: list[dict] = []
    written: list[tuple[str, str]] = []
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal done, last_commit
        if done:
            store.add_captions(pa.Table.from_pylist(done, CAPTIONS_SCHEMA))
            summary.captioned += len(done)
            done = []
        last_commit = time.monotonic()

    def report(n: int) -> None:
        if progress is not None:
            progress(Progress("caption", n, total))

    try:
        report(0)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, total, batch_size):
                batch = todo[start:start + batch_size]
                loaded = list(pool.map(lambda item: _load(item, captioner.decode_min_side), batch))
                summary.skipped += [got for got in loaded if isinstance(got, Skipped)]
                readable = [(item, got) for item, got in zip(batch, loaded, strict=True)
                            if not isinstance(got, Skipped)]
                if readable:
                    images = [image for _, image in readable]
                    texts = call(lambda images=images: captioner.caption(images, batch_size))
                    for ((digest, paths), _), text in zip(readable, texts, strict=True):
                        done.append({"hash": digest, "caption": text, "model": captioner.name,
                                     "identity": captioner.identity, "precision": captioner.precision})
                        written += [(p, text) for p in paths]
                if time.monotonic() - last_commit >= commit_seconds:
                    commit()
                report(min(total, start + batch_size))
    except KeyboardInterrupt:
        commit()
        raise IndexInterrupted(summary.captioned, "captions") from None
    commit()
    summary.seconds += time.perf_counter() - started
    return written


def _load(item: tuple[str, list[str]], min_side: int):
    """The decoded image of one content (from the first of its paths that still holds it), or
    why it cannot be captioned."""
    digest, paths = item
    reason = "it is not a readable image"
    for path in paths:
        try:
            data = read_file(path)
        except UnreadableImageError as exc:
            reason = str(exc)
            continue
        if identity(path, data) != digest:
            reason = "it changed since it was indexed; run clipsearch index, then caption again"
            continue
        try:
            return decode(data, path, min_side).image
        except UnreadableImageError as exc:
            reason = str(exc)
    return Skipped(paths[0], reason.removeprefix(f"{paths[0]}: "))


# -- reading them --------------------------------------------------------------------------------
def of_hashes(source: RowSource, hashes: Iterable[str], stored: pa.Table | None = None) -> dict[str, str]:
    """hash -> caption for those of `hashes` that have one (`stored`: the captions, when the
    caller has read them already)."""
    stored = source.read_captions() if stored is None else stored
    wanted = sorted(set(hashes))
    if stored is None or not wanted:
        return {}
    rows = stored.filter(pc.is_in(stored.column("hash"), value_set=pa.array(wanted, pa.string())))
    return dict(zip(rows.column("hash").to_pylist(), rows.column("caption").to_pylist(), strict=True))


# -- searching them ------------------------------------------------------------------------------
def _pairs(words: Sequence[str]) -> list[tuple[str, str]]:
    words = list(words)
    return list(zip(words, words[1:], strict=False))


def _tokens(text: str) -> list[str]:
    """The words of `text` in order, repeats kept, stop words dropped."""
    return [w for w in WORD.findall(unicodedata.normalize("NFKC", text).casefold()) if w not in STOP_WORDS]


def phrase_of(terms: Sequence[Term]) -> list[str]:
    """A query's words in order, as captions are scored against them: those of its positive
    text terms, less the words of its negative ones."""
    unwanted = {w for t in terms if t.kind == "text" and t.weight < 0 for w in _tokens(t.value)}
    return [w for t in terms if t.kind == "text" and t.weight > 0 for w in _tokens(t.value)
            if w not in unwanted]


def score(words: Sequence[str], caption: str | None) -> tuple[float, list[str]]:
    """How well `caption` answers a query of `words` (phrase_of: in order, repeats kept), 0 to 1,
    and the caption's words that matched, once each."""
    if not caption or not words:
        return 0.0, []
    said = _tokens(caption)
    matched: list[str] = []
    total = 0.0
    for word in words:
        if word in said:
            total += 1.0
            found = word
        elif len(word) >= PREFIX_FROM and (found := next((s for s in said if s.startswith(word)), None)):
            total += PREFIX_WEIGHT
        else:
            continue
        if found not in matched:
            matched.append(found)
    share = total / len(words)
    wanted = _pairs(words)
    if not wanted:
        return share, matched
    held = set(_pairs(said))
    return (share + sum(p in held for p in wanted) / len(wanted)) / 2, matched


def scores(source: RowSource, stored: pa.Table, ids: np.ndarray, words: Sequence[str],
           ) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Each of the rows `ids`' caption score for `words` (0 without a caption), and the words
    each matched; `stored`: the captions (RowSource.read_captions)."""
    out = np.zeros(len(ids))
    matched: dict[int, list[str]] = {}
    if not len(ids) or not words:
        return out, matched
    rows = source.fetch(ids.tolist(), ["id", "hash"])
    hash_of = dict(zip(rows.column("id").to_pylist(), rows.column("hash").to_pylist(), strict=True))
    captions = of_hashes(source, hash_of.values(), stored)
    for i, id_ in enumerate(ids.tolist()):
        value, found = score(words, captions.get(hash_of.get(id_)))
        out[i] = value
        if found:
            matched[id_] = found
    return out, matched
