"""The engine: an opened index (store + lazily loaded model + search structure) and the one
function that builds its parts. The CLI and the Python API both go through here."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from clipsearch import config
from clipsearch.config import db_path
from clipsearch.errors import (
    BadInputError,
    ImageChangedError,
    UnknownImageError,
    UnreadableImageError,
)
from clipsearch.models import (
    ModelSpec,
    check_weights_unchanged,
    load_embedder,
)
from clipsearch.results import (
    Hit,
    ImageRecord,
    IndexInfo,
    Page,
    TagCount,
)
from clipsearch.search.request import ImageData, SearchRequest
from clipsearch.store.table import RowSource, Store

if TYPE_CHECKING:
    import numpy as np

    from clipsearch.enrich.tagging import LabelSet, Tagger
    from clipsearch.models.base import Embedder
    from clipsearch.models.blip import ItmScorer
    from clipsearch.models.captioner import Captioner
    from clipsearch.search.dupes import Group as DupeGroup
    from clipsearch.search.nearest import Filters
    from clipsearch.search.query import Term
    from clipsearch.search.wordsearch import WordIndex
    from clipsearch.store.ann import AnnIndex
    from clipsearch.store.featcache import FeatureCache

    class TextEncoder(Protocol):
        def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

T = TypeVar("T")


class Index:
    """An index opened for searching. Build one with `open_index`.

    One Index may serve many threads at once (the server does): model calls take turns, since
    concurrent forward passes on the same cores only slow each other down, and the search
    structure is swapped, never changed, under a search that is using it. With
    `model_thread=True` every model call, loading included, runs on one thread of its own: each
    thread that runs torch gets its own team of OpenMP threads, and a second team spinning beside
    the first made every text query 25-30% slower (13 ms -> 17 ms, ViT-B-32 on 2 cores).
    """

    def __init__(self, store: RowSource, *, device: str = "auto", embedder: Embedder | None = None,
                 rerank_model: str | None = None, rerank_precision: str = "auto",
                 scorer: ItmScorer | None = None, precision: str = "fp32", model_thread: bool = False,
                 text_encoder: TextEncoder | None = None, ann: AnnIndex | None = None,
                 caption_model: str | None = None, caption_precision: str = "auto",
                 captioner: Captioner | None = None):
        self.store = store
        self.caption_model = caption_model
        self.caption_precision = caption_precision
        self._captioner = captioner
        self.device = device
        self.precision = precision
        self.rerank_model = rerank_model or config.DEFAULT_RERANK_MODEL
        self.rerank_precision = rerank_precision
        self._embedder = embedder
        self._text_encoder = text_encoder
        self._scorer = scorer
        self._ann = ann  # brought up to date with the store on first use
        self._features: FeatureCache | None = None
        self._models = threading.RLock()
        self._state = threading.RLock()
        self._model_thread: ThreadPoolExecutor | None = None
        self._caption_thread: ThreadPoolExecutor | None = None
        self._model_thread_id: int | None = None
        if model_thread:
            self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-model",
                                                    initializer=self._claim_model_thread)
        self._memos: dict[str, tuple[object, object]] = {}

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.store.manifest.model)

    def _claim_model_thread(self) -> None:
        self._model_thread_id = threading.get_ident()

    def _model_call(self, work: Callable[[], T]) -> T:
        """Run `work` (anything that runs a model) when it is its turn, on the model thread if
        the index has one."""
        if self._model_thread is None or threading.get_ident() == self._model_thread_id:
            with self._models:
                return work()
        return self._model_thread.submit(work).result()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._model_call(self._load_embedder)
        return self._embedder

    def _load_embedder(self) -> None:
        if self._embedder is None:
            check_weights_unchanged(self.spec, self.store.manifest.weights_stat)
            self._embedder = load_embedder(self.spec, self.device, self.precision)

    @property
    def text_encoder(self) -> TextEncoder:
        """What turns query words into vectors: the index's exported text tower when it has one
        (clipsearch.models.onnxtext; every path then gives the same results to the bit), else the CLIP
        model itself."""
        if self._text_encoder is None:
            self._model_call(self._open_text_encoder)
        return self._text_encoder

    def _open_text_encoder(self) -> None:
        from clipsearch.models import onnxtext

        if self._text_encoder is None:
            found = None
            if config.fast_query() and self.precision == "fp32":
                found = onnxtext.open_for(self.store.manifest.model)
            self._text_encoder = found or self.embedder

    @property
    def scorer(self) -> ItmScorer:
        """The BLIP re-ranker, loaded on first use."""
        if self._scorer is None:
            self._model_call(self._load_scorer)
        return self._scorer

    def _load_scorer(self) -> None:
        from clipsearch.models.blip import load_scorer

        if self._scorer is None:
            self._scorer = load_scorer(self.rerank_model, self.device, self.rerank_precision)

    @property
    def captioner(self) -> Captioner:
        """The BLIP captioner (clipsearch.enrich.captions), loaded on first use."""
        if self._captioner is None:
            self._model_call(self._load_captioner)
        return self._captioner

    def use_captioner(self, model: str | None = None, precision: str = "auto") -> None:
        """Caption with `model` (None: the one this index has) at `precision` ('auto': the one it
        has) from now on; a captioner already loaded is let go when they differ."""
        model = model or self.caption_model
        precision = self.caption_precision if precision == "auto" else precision
        if (model, precision) != (self.caption_model, self.caption_precision):
            with self._models:
                self.caption_model, self.caption_precision, self._captioner = model, precision, None

    def _load_captioner(self) -> None:
        from clipsearch.enrich.captions import DEFAULT_MODEL
        from clipsearch.models.captioner import load_captioner

        if self._captioner is None:
            self._captioner = load_captioner(self.caption_model or DEFAULT_MODEL, self.device,
                                             self.caption_precision)

    @property
    def models_loaded(self) -> dict[str, bool]:
        return {"clip": self._embedder is not None, "rerank": self._scorer is not None,
                "caption": self._captioner is not None}

    @property
    def ann(self) -> AnnIndex:
        from clipsearch.store.ann import current

        with self._state:
            version = self.store.version
            if self._ann is None or self._ann.table_version != version:
                self._ann = current(self.store, have=self._ann)
            return self._ann

    def refresh(self) -> None:
        """Move to the newest committed state of the index (another process may be indexing):
        the next search sees its rows, and the search structure follows."""
        with self._state:
            self.store.refresh()

    def _memo(self, name: str, key: object, compute: Callable[[], T]) -> T:
        """`compute()`, kept until `key` (table versions) moves on."""
        with self._state:
            if name in self._memos and self._memos[name][0] == key:
                return self._memos[name][1]  # type: ignore[return-value]
        value = compute()
        with self._state:
            self._memos[name] = (key, value)
        return value

    def page(self, request: SearchRequest) -> Page:
        """The page of hits `request` asks for (clipsearch.search.request), with how many images
        the filters allowed and the time each stage took, in milliseconds."""
        return self._image_page(request) if request.like is not None else self._text_page(request)

    def search(self, query: str, k: int = 10, within: str | None = None, **options) -> list[Hit]:
        """Images best matching `query`, best first: a description or a composition of text and
        image terms (clipsearch.search.query). `options` are SearchRequest's: filters (after,
        before, ext, tags, place, camera, kind), words, rerank, candidates, min_match, collapse."""
        return self.page(SearchRequest(query, k=k, within=within, **options)).hits

    def search_page(self, query: str, k: int = 10, within: str | None = None, **options) -> Page:
        """`search`, as the page of `k` hits from rank `offset + 1` on (an option)."""
        return self.page(SearchRequest(query, k=k, within=within, **options))

    def similar(self, image: str | os.PathLike[str] | int | ImageData, k: int = 10,
                within: str | None = None, **options) -> list[Hit]:
        """Images most like `image`: a file inside the index or anywhere else, an indexed row's
        id, or an image's bytes (ImageData); which comes first when it is itself indexed.
        `options`: SearchRequest's filters and offset."""
        return self.page(SearchRequest(like=image, k=k, within=within, **options)).hits

    def similar_page(self, image: str | os.PathLike[str] | int | ImageData, k: int = 10,
                     within: str | None = None, **options) -> Page:
        """`similar`, as a page (see `search_page`)."""
        return self.page(SearchRequest(like=image, k=k, within=within, **options))

    def _text_page(self, r: SearchRequest) -> Page:
        from clipsearch.search.query import Term, parse
        from clipsearch.search.rerank import check_terms
        from clipsearch.search.rerank import rerank as rerank_hits

        started = time.perf_counter()
        from clipsearch.search.wordsearch import query_words

        query = r.query or ""
        terms = [Term("text", query, 1.0, 0)] if r.literal else parse(query, image_terms=r.image_terms)
        filters = r.filters()
        if r.min_match is not None and not 0.0 <= r.min_match <= 1.0:
            raise BadInputError(f"--min-match {r.min_match} is not a probability between 0 and 1")
        if r.candidates is not None and r.candidates < 1:
            raise BadInputError(f"--candidates must be at least 1, not {r.candidates}")
        _check_page(r.k, r.offset)
        texts = check_terms(terms) if r.reranked else []
        vector = self.query_vector(terms, query)
        embedded = time.perf_counter()
        wanted = r.k + r.offset
        if r.reranked:
            wanted = max(wanted, r.candidates or config.DEFAULT_CANDIDATES)
        from clipsearch.enrich.captions import phrase_of

        matching = query_words(terms) if r.words else []
        phrase = phrase_of(terms) if r.words else []
        hits, considered = self._nearest(vector, wanted, filters, r.collapse, matching, phrase)
        timing = {"embed": embedded - started, "search": time.perf_counter() - embedded}
        if r.reranked:
            reranked = time.perf_counter()
            hits = self._model_call(lambda: rerank_hits(
                hits, texts, self.scorer, self.feature_cache(), r.k + r.offset, r.min_match,
                workers=config.default_workers()))
            timing["rerank"] = time.perf_counter() - reranked
        return _page(_finished(self, hits[r.offset:r.offset + r.k], r.details, timing), considered, timing,
                     started)

    def _image_page(self, r: SearchRequest) -> Page:
        started = time.perf_counter()
        filters = r.filters()
        _check_page(r.k, r.offset)
        vector, own = self._image(r.like)
        embedded = time.perf_counter()
        wanted = r.k + r.offset
        while True:
            hits, considered = self._nearest(vector, wanted + (own is not None), filters)
            # the photo asked about comes first among equal scores (a copy in another format
            # scores 1.0 too): look past the page while the tie at the top goes on
            if (own is None or any(h.id == own for h in hits) or len(hits) < wanted + 1
                    or hits[-1].score < hits[0].score - _TIE):
                break
            wanted *= 2
        hits = _asked_first(hits, own)[:r.k + r.offset]
        timing = {"embed": embedded - started, "search": time.perf_counter() - embedded}
        return _page(_finished(self, hits[r.offset:r.offset + r.k], r.details, timing), considered, timing,
                     started)

    def query_vector(self, terms: Sequence[Term], query: str = "") -> np.ndarray:
        """The unit vector a parsed query stands for (clipsearch.search.query.combine)."""
        import numpy as np

        from clipsearch.search.query import combine

        vectors = np.zeros((len(terms), self.store.manifest.dim), np.float32)
        texts = [i for i, t in enumerate(terms) if t.kind == "text"]
        if texts:
            vectors[texts] = self.embed_texts([terms[i].value for i in texts])
        for i, term in enumerate(terms):
            if term.kind == "image":
                vectors[i] = self.image_vector(term.value)
        return combine(terms, vectors, query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of plain texts, from the encoder queries use. An export found damaged is
        set aside (and deleted, so that the next search or index run makes it again): the CLIP
        model answers instead, and the logger says so once."""
        from clipsearch.models.onnxtext import DamagedExport

        encoder = self.text_encoder
        try:
            return self._model_call(lambda: encoder.embed_texts(list(texts)))
        except DamagedExport as exc:
            self._set_aside(encoder, exc)
        encoder = self.text_encoder
        return self._model_call(lambda: encoder.embed_texts(list(texts)))

    def _set_aside(self, encoder: TextEncoder, exc: Exception) -> None:
        import logging
        import shutil

        with self._state:
            if self._text_encoder is not encoder:
                return  # another thread did it
            self._text_encoder = self.embedder  # from now on: neither reopened nor replaced
        shutil.rmtree(encoder.folder, ignore_errors=True)
        logging.getLogger("clipsearch").warning(
            f"note: {exc} (its files are damaged); searching with the CLIP model instead, and the "
            "next search or index run exports it again")

    def image_vector(self, image: str | os.PathLike[str] | int | ImageData) -> np.ndarray:
        """The vector of an image file, an indexed row (by id) or an image's bytes. Content the
        index holds is never embedded again: its stored vector is the one indexing computed."""
        return self._image(image)[0]

    def _image(self, image: str | os.PathLike[str] | int | ImageData) -> tuple[np.ndarray, int | None]:
        """`image_vector`, and the row id of the image when it is an indexed row: given by id, or
        the path of an indexed, unchanged file."""
        import numpy as np

        from clipsearch.media.images import decode, identity, read_file
        from clipsearch.media.kinds import is_video_name

        if isinstance(image, int):
            rows = self.store.fetch([image], ["vector"])
            if not rows.num_rows:
                raise _unknown_image(image)
            return np.asarray(rows.column("vector")[0].as_py(), np.float32), image
        if isinstance(image, ImageData):
            data, name = image.data, image.name
        else:
            name = os.path.abspath(os.path.expanduser(os.fspath(image)))
            if os.path.isdir(name):
                raise BadInputError(f"{name} is a folder; give one photo or video (--in FOLDER keeps "
                                    "the hits to a folder)")
            given = os.fspath(image)
            if not os.path.isfile(name) and os.sep not in given:  # a bare name, as info and forget take
                named = self.store.by_name(given, ["id", "path"])
                paths = sorted(set(named.column("path").to_pylist()))
                if len(paths) == 1:
                    return self._image(paths[0]) if os.path.isfile(paths[0]) else \
                        self._image(int(named.column("id")[0].as_py()))
                if len(paths) > 1:
                    raise BadInputError(f"{given} names {len(paths)} indexed photos ({', '.join(paths[:3])}"
                                        f"{' ...' if len(paths) > 3 else ''}); give its path")
            if not os.path.isfile(name):
                raise BadInputError(f"image not found: {name}")
            if is_video_name(name):
                return self._video_vector(name), None
            st = os.stat(name)
            row = self.store.row(name, ["id", "size", "mtime_ns", "vector"])
            if row and (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
                # indexed and unchanged: not even read
                return np.asarray(row["vector"], np.float32), row["id"]
            data = read_file(name)
        row = self.store.row_by_hash(identity(name, data), ["vector"])
        if row:
            return np.asarray(row["vector"], np.float32), None  # the same content is indexed elsewhere
        embedder = self.embedder
        decoded = decode(data, name, embedder.decode_min_side)
        return self._model_call(lambda: embedder.embed_pil([decoded.image])[0]), None

    def _video_vector(self, path: str) -> np.ndarray:
        """A video as a query: the mean of its indexed frames, or its first frame's."""
        import numpy as np

        from clipsearch.media.video import frame_at

        st = os.stat(path)
        if self.store.has_video:
            rows = self.store.by_paths([path], ["size", "mtime_ns", "vector"])
            if rows.num_rows and (rows.column("size")[0].as_py(), rows.column("mtime_ns")[0].as_py()) == (
                    st.st_size, st.st_mtime_ns):
                mean = self.store.matrix(rows.column("vector")).mean(axis=0)
                return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        embedder = self.embedder
        image = frame_at(path, 0.0, embedder.decode_min_side)
        return self._model_call(lambda: embedder.embed_pil([image])[0])

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      filters: Filters | None = None) -> list[Hit]:
        return self._nearest(vector, k, filters)[0]

    def _nearest(self, vector: np.ndarray, k: int, filters: Filters | None,
                 collapse: bool = False, words: Sequence[str] = (), phrase: Sequence[str] = (),
                 ) -> tuple[list[Hit], int]:
        """The k best hits among the rows `filters` allow, and how many rows that is; with
        `collapse`, one hit per duplicate group (its keeper, clipsearch.search.dupes). `words`: the
        query's words, matched against the photos' (clipsearch.search.wordsearch); `phrase`: the same
        in order, matched against their captions (clipsearch.enrich.captions)."""
        from clipsearch.search.nearest import allowed_ids, nearest
        from clipsearch.search.wordsearch import fuse

        ann = self.ann
        needs_words = bool(words or phrase) or bool(filters and (filters.place or filters.camera))
        index = self.word_index() if needs_words else None
        allowed = allowed_ids(self.store, filters, index) if filters else None
        considered = ann.size if allowed is None else len(allowed)

        def moments(n: int) -> list[Hit]:
            fused = fuse(self.store, ann, vector, n, allowed, index, words, phrase=phrase) \
                if (words or phrase) and index else None
            return fused if fused is not None else nearest(self.store, ann, vector, n, allowed)

        def ranked(n: int) -> list[Hit]:
            if not self.holds_videos():
                return moments(n)
            from clipsearch.media.video import group

            wanted = 3 * n + 10
            while True:  # a video's frames are many rows: more moments than hits are ranked
                found = moments(wanted)
                hits = group(found, n)
                if len(hits) >= n or len(found) < wanted:
                    return hits
                wanted *= 4

        if not collapse:
            return ranked(k), considered
        from clipsearch.search.dupes import collapse as one_per_group

        wanted = 2 * k + 10
        while True:  # a page of groups may need more hits than a page
            hits = ranked(wanted)
            kept = one_per_group(self.store, ann, hits, vector, allowed)
            if len(kept) >= k or len(hits) < wanted:
                return kept[:k], considered
            wanted *= 2

    def holds_videos(self) -> bool:
        """Whether any row is a video's frame (clipsearch.media.video), once per table version."""
        store = self.store

        def any_frame() -> bool:
            t = store.read(["t"]).column("t")
            return t.null_count < len(t)

        return store.has_video and self._memo("videos", store.version, any_frame)

    def word_index(self) -> WordIndex | None:
        """The photos' words (clipsearch.search.wordsearch), read once per table version."""
        from clipsearch.search.wordsearch import WordIndex

        return self._memo("words", self.store.version, lambda: WordIndex.of(self.store))

    def dupes(self, threshold: float | None = None, *, exact: bool = False,
              within: str | os.PathLike[str] | None = None) -> list[DupeGroup]:
        """Groups of duplicate photos, identical content first, then near-duplicates (CLIP
        cosine at least `threshold`, default clipsearch.search.dupes.DEFAULT_THRESHOLD), each kind
        largest first; `exact` finds identical content only; `within` a folder only. Each group
        names the photo to keep and why (clipsearch.search.dupes.preference)."""
        from clipsearch.search.dupes import DEFAULT_THRESHOLD, check_threshold, find
        from clipsearch.search.nearest import Filters, allowed_ids
        from clipsearch.store.ann import FLAT_MAX

        threshold = check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
        filters = Filters.make(within)

        def compute() -> list[DupeGroup]:
            allowed = allowed_ids(self.store, filters) if filters else None
            ann = self.ann if not exact and self.store.count() > FLAT_MAX else None
            return find(self.store, ann, threshold, exact=exact, allowed=allowed)

        key = (self.store.version, threshold, exact, filters.within)
        return self._memo("dupes", key, compute)

    def records(self, ids: Sequence[int], tags: bool = True) -> dict[int, ImageRecord]:
        """What the index knows about each of these rows (ids it does not hold are left out);
        `tags=False` leaves their tags and captions out, which saves the lookups."""
        rows = self.store.fetch(list(ids), self.store.meta_columns).to_pylist()
        found = [ImageRecord.from_row(r) for r in rows]
        return {r.id: r for r in (self.tagged(self.captioned(found)) if tags else found)}

    def tagged(self, images: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The same records with the tags of the last `tag` run, best first."""
        import dataclasses

        import pyarrow as pa
        import pyarrow.compute as pc

        stored = self.store.read_tags() if images else None
        if stored is None:
            return list(images)
        rows = stored[0]
        wanted = pa.array(sorted({i.hash for i in images}), pa.string())
        labels: dict[str, list[str]] = {}
        for row in rows.filter(pc.is_in(rows.column("hash"), value_set=wanted)).sort_by(
                [("score", "descending")]).to_pylist():
            labels.setdefault(row["hash"], []).append(row["label"])
        return [dataclasses.replace(i, tags=labels.get(i.hash, [])) for i in images]

    def captioned(self, images: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The same records with their captions (clipsearch.enrich.captions), where they have one."""
        import dataclasses

        from clipsearch.enrich.captions import of_hashes

        found = of_hashes(self.store, (i.hash for i in images)) if images else {}
        return [dataclasses.replace(i, caption=found[i.hash]) if i.hash in found else i for i in images]

    def record(self, id: int, tags: bool = True) -> ImageRecord:
        found = self.records([id], tags).get(id)
        if found is None:
            raise _unknown_image(id)
        return found

    def read_image(self, id: int) -> tuple[ImageRecord, bytes]:
        """An indexed image's record and its file's bytes, exactly as they were indexed."""
        record = self.record(id, tags=False)
        return record, self.indexed_bytes(record)

    def indexed_bytes(self, record: ImageRecord) -> bytes:
        """The bytes of a record's file, exactly as they were indexed: a file that has since
        vanished or changed is refused, never read as something else."""
        from clipsearch.media.images import identity, read_file

        refresh = "run clipsearch index on its folder to bring the index up to date"
        try:
            data = read_file(record.path)
        except UnreadableImageError as exc:
            reason = exc.reason if os.path.exists(record.path) else "the file no longer exists"
            raise ImageChangedError(f"{record.path}: {reason}; {refresh}") from None
        if identity(record.path, data) != record.hash:
            raise ImageChangedError(f"{record.path} changed since it was indexed; {refresh}")
        return data

    def indexed_file(self, record: ImageRecord) -> str:
        """The path of a record's file when it is as indexed, by its size and modification time
        (a video's gigabytes are not hashed again per request); a file that has since vanished
        or changed is refused, never served as something else."""
        refresh = "run clipsearch index on its folder to bring the index up to date"
        try:
            st = os.stat(record.path)
        except OSError:
            raise ImageChangedError(f"{record.path}: the file no longer exists; {refresh}") from None
        if (st.st_size, st.st_mtime_ns) != (record.bytes, record.mtime_ns):
            raise ImageChangedError(f"{record.path} changed since it was indexed; {refresh}")
        return record.path

    def partner_file(self, record: ImageRecord, role: str) -> str | None:
        """The path of a photo's partner in `role` ("motion": its Live Photo video; "original":
        its RAW) when one was recorded as the photo was indexed and is still that file (a regular
        file beside it, of the recorded size and modification time); None if none was recorded.
        A partner replaced since, or a link put in its place, is refused, never served."""
        if record.t is not None or not self.store.has_pairs:
            return None
        photo = self.indexed_file(record)
        stamp = self.store.fetch([record.id], ["pairs"]).column("pairs").to_pylist()
        found = _partner(photo, stamp[0] if stamp else None, role)
        if found is None:
            return None
        path, unchanged = found
        if not unchanged:
            raise ImageChangedError(f"{path} changed since {photo} was indexed; run clipsearch index on "
                                    "its folder to bring the index up to date")
        return path

    def partners(self, records: Sequence[ImageRecord], role: str) -> dict[int, str]:
        """Each of `records` (ids) that `partner_file` would give a partner in `role` now, by the
        same rule, with that partner's path: what a page of hits says it has (one lookup)."""
        still = [r for r in records if r.t is None]
        if not still or not self.store.has_pairs:
            return {}
        rows = self.store.fetch([r.id for r in still], ["id", "pairs"])
        stamps = dict(zip(rows.column("id").to_pylist(), rows.column("pairs").to_pylist(), strict=True))
        out = {}
        for record in still:
            found = _partner(record.path, stamps.get(record.id), role)
            if found is not None and found[1]:
                out[record.id] = found[0]
        return out

    def frame_bytes(self, record: ImageRecord, t: float, size: int | None = None) -> bytes:
        """A video record's frame at `t` seconds, upright, as PNG (the thumbnails' source): its
        short side at most `size`, when given (a 4K frame is not decoded whole for a thumbnail)."""
        import io

        from clipsearch.media.video import frame_at

        if record.duration is not None and t > record.duration + 1:
            raise BadInputError(f"t={t:g} is past the end of {record.path} ({record.duration:.1f} s)")
        image = frame_at(self.indexed_file(record), t, size)
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()

    def facets(self) -> dict[str, list[dict]]:
        """The library's places and cameras, each with how many photos, most first (names in
        order among equals): what --place and --camera can take."""
        import collections

        def count() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {"places": [], "cameras": []}
            if not self.store.has_words:
                return out
            table = self.store.read(["place", "camera"])
            for key, column in (("places", "place"), ("cameras", "camera")):
                counts = collections.Counter(v for v in table.column(column).to_pylist() if v)
                ranked = sorted(counts.items(), key=lambda x: (-x[1], x[0]))
                out[key] = [{"name": n, "images": c} for n, c in ranked]
            return out

        return self._memo("facets", self.store.version, count)

    def about(self, photo: str | os.PathLike[str]) -> list[ImageRecord]:
        """What the index knows of a photo: the row of that file, or, for a bare name that is
        not a file here (IMG_2041.jpg), of every indexed file of that name (case-insensitive)."""

        path = os.path.abspath(os.path.expanduser(os.fspath(photo)))
        found = self.store.by_paths([path], ["id"]).column("id").to_pylist() if os.path.exists(path) else []
        if not found:
            found = self.store.by_name(os.fspath(photo), ["id"]).column("id").to_pylist()
        if not found:
            raise BadInputError(f"{photo}: no indexed photo has this path or name; "
                                "`clipsearch search` finds photos by their names too")
        records = self.records(found)
        located = [r for r in records.values() if r.lat is not None and r.lon is not None]
        if located:  # the quarter of the city, which the place a search shows leaves out
            import dataclasses

            from clipsearch.media import places

            for record, parts in zip(located, places.names([(r.lat, r.lon) for r in located]), strict=True):
                records[record.id] = dataclasses.replace(record, near=parts[places.NEAR])
        return [records[i] for i in sorted(records, key=lambda i: records[i].path)]

    def folders(self) -> list[tuple[str, int]]:
        """Each folder that directly holds indexed images, with how many, in path order."""
        import collections

        def count() -> list[tuple[str, int]]:
            paths = self.store.read(["path"]).column("path").to_pylist()
            return sorted(collections.Counter(os.path.dirname(p) for p in paths).items())

        return self._memo("folders", self.store.version, count)

    def feature_cache(self) -> FeatureCache:
        """Where the re-ranker keeps image features between searches (bounded; LRU)."""
        from clipsearch.store.featcache import FeatureCache

        identity = self.scorer.identity
        with self._state:
            if self._features is None:
                self._features = FeatureCache(config.cache_folder(config.FEATURES), identity,
                                              config.feature_cache_bytes())
            return self._features

    def caption_call(self, work: Callable[[], T]) -> T:
        """Run a caption batch: in a process that serves searches (model_thread), on a thread of
        its own at the lowest priority, outside the model lock, so searches never wait for a
        caption; else here."""
        if self._model_thread is None:
            return work()
        with self._state:
            if self._caption_thread is None:
                from clipsearch.enrich.captions import lower_priority

                self._caption_thread = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-captions",
                                                          initializer=lower_priority)
        return self._caption_thread.submit(work).result()

    def tagger(self, labels: LabelSet) -> Tagger:
        """`labels` with their prompt ensembles embedded: what scores images for `tag` (and
        for `eval zeroshot`)."""
        from clipsearch.enrich.tagging import Tagger

        return Tagger.embed(labels, self.embed_texts)

    def adopt_export(self, encoder: TextEncoder | None) -> None:
        """Search with `encoder` (the text export the builder just made and opened) from now on,
        unless this index already has a text encoder, or searches at another precision."""
        with self._state:
            if self._text_encoder is None and encoder is not None and self.precision == "fp32":
                self._text_encoder = encoder

    def tags(self) -> list[TagCount]:
        """Each label of the last `tag` run with how many indexed images carry it, most first."""
        import collections

        def count() -> list[TagCount]:
            stored = self.store.read_tags()
            if stored is None:
                return []
            rows, label_set = stored
            copies = collections.Counter(self.store.read(["hash"]).column("hash").to_pylist())
            counts = collections.Counter()
            for h, label in zip(rows.column("hash").to_pylist(), rows.column("label").to_pylist(),
                                strict=True):
                counts[label] += copies.get(h, 0)
            return sorted((TagCount(label, counts.get(label, 0)) for label in label_set.get("prompts", {})),
                          key=lambda t: (-t.images, t.label))

        return self._memo("tags", (self.store.version, self.store.tags_version()), count)

    def info(self) -> IndexInfo:
        from clipsearch.store.ann import describe

        spec, manifest, rows = self.spec, self.store.manifest, self.store.count()
        videos = frames = 0
        if self.holds_videos():  # a video is a row per frame: counted once
            import pyarrow.compute as pc

            table = self.store.read(["path", "t"])
            moving = table.filter(pc.is_valid(table.column("t")))
            frames, videos = moving.num_rows, len(pc.unique(moving.column("path")))
        return IndexInfo(
            db=str(self.store.path), images=rows - frames + videos, roots=list(manifest.roots),
            model=spec.name, pretrained=spec.pretrained, dim=manifest.dim,
            bytes=self.store.disk_bytes(), ann=describe(rows), videos=videos, frames=frames,
            labels=list((self.store.read_tags(rows=False) or (None, {}))[1].get("prompts", {})),
            offline=dict(manifest.offline), exclude=list(manifest.exclude), **self._caption_counts(),
        )

    def _caption_counts(self) -> dict:
        import pyarrow.compute as pc

        stored = self.store.read_captions()
        if stored is None:
            return {}
        have = pc.is_in(self.store.read(["hash"]).column("hash"),
                        value_set=stored.column("hash").combine_chunks())
        models = sorted(set(stored.column("model").to_pylist()))
        return {"captioned": int(pc.sum(have).as_py() or 0), "caption_models": models}


def _partner(photo: str, stamp: str | None, role: str) -> tuple[str, bool] | None:
    """The partner in `role` that `stamp` (the photo's `pairs` value) recorded beside `photo`,
    and whether it is still that file (a regular file of the recorded size and time); None when
    none was recorded."""
    from clipsearch.media.scan import partner_named, recorded_pairs

    partners = recorded_pairs(stamp)
    name = partner_named(photo, partners, role)
    if name is None:
        return None
    path = os.path.join(os.path.dirname(photo), name)
    try:
        st = os.lstat(path)
    except OSError:
        return path, False
    return path, stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == partners[name]


def _unknown_image(id: int) -> UnknownImageError:
    return UnknownImageError(f"no image with id {id} in this index; it may have been removed or "
                             "re-indexed: search again for its current id")


_TIE = 1e-6  # scores this close are equal: the same vector, scored in another order


def _asked_first(hits: list[Hit], own: int | None) -> list[Hit]:
    """`hits` with the row `own` moved to the front when it ties with the best score."""
    import dataclasses

    at = next((i for i, h in enumerate(hits) if h.id == own), None)
    if not at or hits[at].score < hits[0].score - _TIE:
        return hits
    moved = [hits[at], *hits[:at], *hits[at + 1:]]
    return [dataclasses.replace(h, rank=rank) for rank, h in enumerate(moved, 1)]


def _check_page(k: int, offset: int) -> None:
    if k < 1:
        raise BadInputError(f"-k must be at least 1, not {k}")
    if offset < 0:
        raise BadInputError(f"offset must be 0 or more, not {offset}")


def _finished(index: Index, hits: list[Hit], details: bool, seconds: dict[str, float]) -> list[Hit]:
    """A page's hits as every door shows them: their rows with their captions, and their RAW
    originals (a RAW + JPEG pair's); with `details` (SearchRequest.details: the API's pages) also
    the rows' tags and whether a Live Photo's motion plays (`motion`)."""
    from dataclasses import replace

    from clipsearch.media.scan import originals_of

    images = index.captioned([h.image for h in hits if h.image is not None])
    moving: dict[int, str] = {}
    if details:
        moving = index.partners(images, "motion")
        started = time.perf_counter()
        images = index.tagged(images)
        seconds["tags"] = time.perf_counter() - started
    by_id = {i.id: i for i in images}
    originals = originals_of(h.path for h in hits if h.t is None)
    return [replace(h, image=by_id[h.id], caption=by_id[h.id].caption, original=originals.get(h.path),
                    motion=h.id in moving)
            if h.id in by_id else replace(h, original=originals.get(h.path)) for h in hits]


def _page(hits: list[Hit], considered: int, seconds: dict[str, float], started: float) -> Page:
    seconds["total"] = time.perf_counter() - started
    return Page(hits, considered, {stage: round(s * 1000, 2) for stage, s in seconds.items()})


def open_index(db: str | os.PathLike[str] | None = None, *, device: str = "auto",
               embedder: Embedder | None = None, rerank_model: str | None = None,
               rerank_precision: str = "auto", scorer: ItmScorer | None = None,
               precision: str = "fp32", model_thread: bool = False, caption_model: str | None = None,
               caption_precision: str = "auto") -> Index:
    """Open an existing index for searching (`db` defaults to CLIPSEARCH_DB or the data dir).

    `precision` (fp32, bf16, fp16 on GPUs, int8 on CPUs) is the CLIP model's, for queries;
    `rerank_model` (a hub name or a folder saved with save_pretrained) and `rerank_precision`
    (auto, fp32, bf16, int8) apply to searches with `rerank=True`. `model_thread` runs every
    model call on one thread of the index's own (for a process that searches from many threads).
    `caption_model` and `caption_precision` are the BLIP captioner's, for `caption`.
    """
    return Index(Store.open(db_path(db)), device=device, embedder=embedder,
                 rerank_model=rerank_model, rerank_precision=rerank_precision, scorer=scorer,
                 precision=precision, model_thread=model_thread, caption_model=caption_model,
                 caption_precision=caption_precision)
