"""The engine: an opened index (store + lazily loaded model + search structure) and the one
function that builds its parts. The CLI and the Python API both go through here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch import config
from clipsearch.errors import BadInputError, ModelMismatchError
from clipsearch.models import (
    ModelSpec,
    check_weights_unchanged,
    load_embedder,
    parse_model_spec,
    weights_stat,
)
from clipsearch.results import Hit, IndexInfo, IndexSummary, Skipped, TagCount, TagSummary
from clipsearch.scan import normalize_root
from clipsearch.store import Manifest, Store, lock_dir

if TYPE_CHECKING:
    from datetime import datetime

    import numpy as np

    from clipsearch.ann import AnnIndex
    from clipsearch.featcache import FeatureCache
    from clipsearch.indexer import ProgressCallback
    from clipsearch.models.base import Embedder
    from clipsearch.models.blip import ItmScorer
    from clipsearch.query import Term
    from clipsearch.search import Filters
    from clipsearch.tagging import LabelSet


class Index:
    """An index opened for searching. Build one with `open_index`."""

    def __init__(self, store: Store, *, device: str = "auto", embedder: Embedder | None = None,
                 rerank_model: str | None = None, rerank_precision: str = "auto",
                 scorer: ItmScorer | None = None, precision: str = "fp32"):
        self.store = store
        self.device = device
        self.precision = precision
        self.rerank_model = rerank_model or config.DEFAULT_RERANK_MODEL
        self.rerank_precision = rerank_precision
        self._embedder = embedder
        self._scorer = scorer
        self._ann: AnnIndex | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.store.manifest.model)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            check_weights_unchanged(self.spec, self.store.manifest.weights_stat)
            self._embedder = load_embedder(self.spec, self.device, self.precision)
        return self._embedder

    @property
    def scorer(self) -> ItmScorer:
        """The BLIP re-ranker, loaded on first use."""
        if self._scorer is None:
            from clipsearch.models.blip import load_scorer

            self._scorer = load_scorer(self.rerank_model, self.device, self.rerank_precision)
        return self._scorer

    @property
    def ann(self) -> AnnIndex:
        from clipsearch.ann import current

        version = self.store.version
        if self._ann is None or self._ann.table_version != version:
            self._ann = current(self.store)
        return self._ann

    def search(
        self, query: str, k: int = 10, within: str | None = None, *,
        after: str | datetime | None = None, before: str | datetime | None = None,
        ext: str | Sequence[str] | None = None, tags: str | Sequence[str] | None = None,
        rerank: bool = False, candidates: int | None = None, min_match: float | None = None,
    ) -> list[Hit]:
        """Images best matching `query`, best first.

        `query` is a description or a composition of text and image terms (clipsearch.query).
        Filters: `within` a folder, taken `after`/`before` a date, file extension(s) `ext`, and
        `tags` (every one of them, from `tag`).
        `rerank` re-orders the top `candidates` with BLIP; `min_match` (implies `rerank`) drops
        hits whose BLIP match probability is below it, so a query without a match returns [].
        """
        from clipsearch.query import parse
        from clipsearch.rerank import check_terms
        from clipsearch.rerank import rerank as rerank_hits
        from clipsearch.search import Filters

        terms = parse(query)
        filters = Filters.make(within, after, before, ext, tags)
        if min_match is not None:
            if not 0.0 <= min_match <= 1.0:
                raise BadInputError(f"--min-match {min_match} is not a probability between 0 and 1")
            rerank = True
        if candidates is not None and candidates < 1:
            raise BadInputError(f"--candidates must be at least 1, not {candidates}")
        texts = check_terms(terms) if rerank else []
        vector = self.query_vector(terms, query)
        if not rerank:
            return self.search_vector(vector, k, filters)
        first = self.search_vector(vector, max(k, candidates or config.DEFAULT_CANDIDATES), filters)
        return rerank_hits(first, texts, self.scorer, self.feature_cache(), k, min_match,
                           workers=config.default_workers())

    def similar(
        self, image: str | os.PathLike[str], k: int = 10, within: str | None = None, *,
        after: str | datetime | None = None, before: str | datetime | None = None,
        ext: str | Sequence[str] | None = None, tags: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        """Images most like `image`, which may be inside the index or anywhere else."""
        from clipsearch.search import Filters

        filters = Filters.make(within, after, before, ext, tags)
        return self.search_vector(self.image_vector(image), k, filters)

    def query_vector(self, terms: Sequence[Term], query: str = "") -> np.ndarray:
        """The unit vector a parsed query stands for (clipsearch.query.combine)."""
        import numpy as np

        from clipsearch.query import combine

        vectors = np.zeros((len(terms), self.store.manifest.dim), np.float32)
        texts = [i for i, t in enumerate(terms) if t.kind == "text"]
        if texts:
            vectors[texts] = self.embedder.embed_texts([terms[i].value for i in texts])
        for i, term in enumerate(terms):
            if term.kind == "image":
                vectors[i] = self.image_vector(term.value)
        return combine(terms, vectors, query)

    def image_vector(self, image: str | os.PathLike[str]) -> np.ndarray:
        import numpy as np

        from clipsearch.images import load_image

        path = os.path.abspath(os.path.expanduser(os.fspath(image)))
        if not os.path.isfile(path):
            raise BadInputError(f"image not found: {path}")
        st = os.stat(path)
        row = self.store.row(path, ["size", "mtime_ns", "vector"])
        if row and (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
            return np.asarray(row["vector"], np.float32)  # indexed and unchanged
        decoded = load_image(path, self.embedder.decode_min_side)
        return self.embedder.embed_pil([decoded.image])[0]

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      filters: Filters | None = None) -> list[Hit]:
        from clipsearch.search import allowed_ids, nearest

        allowed = allowed_ids(self.store, filters) if filters else None
        return nearest(self.store, self.ann, vector, k, allowed)

    def feature_cache(self) -> FeatureCache:
        """Where the re-ranker keeps image features between searches (bounded; LRU)."""
        from clipsearch.featcache import FeatureCache

        return FeatureCache(config.cache_dir() / "itm-features", self.scorer.identity,
                            config.feature_cache_bytes())

    def tag(self, labels: LabelSet | str | Sequence[str] | None = None, *,
            labels_file: str | os.PathLike[str] | None = None, threshold: float = 0.5,
            top: int | None = None, write_xmp: bool = False) -> TagSummary:
        """Tag every indexed image with the labels that fit (clipsearch.tagging), replacing the
        previous tags in one commit; optionally merge the tags into XMP sidecars.

        `labels` is a LabelSet, or 'a,b,c' / a list (with `labels_file`, `threshold`, `top` as
        in clipsearch.tagging.label_set); neither means the built-in photo subjects. Later
        `index_folders` runs tag new images with the same labels, threshold and top.
        """
        import time

        from clipsearch.tagging import LabelSet, Tagger, label_set, tag_store

        started = time.perf_counter()
        if not isinstance(labels, LabelSet):
            labels = label_set(labels, labels_file, threshold, top)
        tagger = Tagger.embed(labels, self.embedder.embed_texts)
        with self.store.writer_lock():
            self.store.refresh()
            images = tag_store(self.store, tagger)
        summary = TagSummary(labels.labels, images)
        if write_xmp:
            from clipsearch.errors import SidecarError
            from clipsearch.xmp import merge_subjects

            for image in images:
                if image.tags:
                    try:
                        summary.sidecars_written += merge_subjects(image.path, [t for t, _ in image.tags])
                    except SidecarError as exc:
                        summary.skipped.append(Skipped(exc.path, exc.reason))
        summary.seconds = time.perf_counter() - started
        return summary

    def tags(self) -> list[TagCount]:
        """Each label of the last `tag` run with how many indexed images carry it, most first."""
        import collections

        stored = self.store.read_tags()
        if stored is None:
            return []
        rows, label_set = stored
        copies = collections.Counter(self.store.read(["hash"]).column("hash").to_pylist())
        counts = collections.Counter()
        for h, label in zip(rows.column("hash").to_pylist(), rows.column("label").to_pylist(), strict=True):
            counts[label] += copies.get(h, 0)
        return sorted((TagCount(label, counts.get(label, 0)) for label in label_set.get("prompts", {})),
                      key=lambda t: (-t.images, t.label))

    def info(self) -> IndexInfo:
        from clipsearch.ann import describe

        spec, manifest, images = self.spec, self.store.manifest, self.store.count()
        return IndexInfo(
            db=str(self.store.path), images=images, roots=list(manifest.roots),
            model=spec.name, pretrained=spec.pretrained, dim=manifest.dim,
            bytes=self.store.disk_bytes(), ann=describe(images),
            labels=list((self.store.read_tags(rows=False) or (None, {}))[1].get("prompts", {})),
        )


def db_path(db: str | os.PathLike[str] | None) -> Path:
    return Path(db).expanduser().absolute() if db else config.default_db().absolute()


def open_index(db: str | os.PathLike[str] | None = None, *, device: str = "auto",
               embedder: Embedder | None = None, rerank_model: str | None = None,
               rerank_precision: str = "auto", scorer: ItmScorer | None = None,
               precision: str = "fp32") -> Index:
    """Open an existing index for searching (`db` defaults to CLIPSEARCH_DB or the data dir).

    `precision` (fp32, bf16, fp16 on GPUs, int8 on CPUs) is the CLIP model's, for queries;
    `rerank_model` (a hub name or a folder saved with save_pretrained) and `rerank_precision`
    (auto, fp32, bf16, int8) apply to searches with `rerank=True`.
    """
    return Index(Store.open(db_path(db)), device=device, embedder=embedder,
                 rerank_model=rerank_model, rerank_precision=rerank_precision, scorer=scorer,
                 precision=precision)


def resolve_spec(model: str | None, pretrained: str | None, recorded: ModelSpec | None) -> ModelSpec:
    """flag > index manifest > default."""
    if model is None and pretrained is None:
        if recorded is not None:
            return recorded
        return parse_model_spec(config.DEFAULT_MODEL, config.DEFAULT_PRETRAINED)
    name = model or (recorded.name if recorded else config.DEFAULT_MODEL)
    if pretrained is None:
        if recorded is not None and recorded.name == name:
            pretrained = recorded.pretrained
        elif name == config.DEFAULT_MODEL:
            pretrained = config.DEFAULT_PRETRAINED
    return parse_model_spec(name, pretrained)


def index_folders(
    roots: Sequence[str | os.PathLike[str]],
    db: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = config.DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    exclude: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    embedder: Embedder | None = None,
    commit_every: int = config.COMMIT_EVERY,
) -> IndexSummary:
    """Index (or re-index, incrementally) the images under `roots` into the index at `db`.

    `precision`: fp32 (open_clip's own vectors), or bf16 / fp16 (GPU) / int8 (CPU) for speed.
    """
    from clipsearch.indexer import Indexer

    if not roots:
        raise BadInputError("no folder given; say which folder to index, e.g. clipsearch index ~/Photos")
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, not {batch_size}")
    folders = [normalize_root(r) for r in roots]
    path = db_path(db)
    with lock_dir(path):
        store = Store.open(path) if Store.exists(path) else None
        recorded = ModelSpec.from_dict(store.manifest.model) if store else None
        spec = embedder.spec if embedder is not None else resolve_spec(model, pretrained, recorded)
        if recorded is not None and not spec.same_model(recorded):
            raise ModelMismatchError(
                f"the index at {path} was built with {recorded.describe()}, not {spec.describe()}; "
                "drop --model/--pretrained to keep using it, or index into another --db"
            )
        if store is None:
            embedder = embedder or load_embedder(spec, device, precision)
            store = Store.create(path, Manifest(model=spec.to_dict(), dim=embedder.dim,
                                                weights_stat=weights_stat(spec)))
        elif spec != recorded:  # same weights found at a new path: remember where they are now
            store.manifest.model, store.manifest.weights_stat = spec.to_dict(), weights_stat(spec)

        def lazy_embedder() -> Embedder:
            nonlocal embedder
            if embedder is None:
                check_weights_unchanged(spec, store.manifest.weights_stat)
                embedder = load_embedder(spec, device, precision)
            return embedder

        indexer = Indexer(
            store, lazy_embedder, batch_size=batch_size,
            workers=config.default_workers() if workers is None else workers,
            progress=progress, commit_every=commit_every,
        )
        summary = indexer.run(folders, exclude)
        store.manifest.roots = sorted(set(store.manifest.roots) | set(folders))
        store.save_manifest()
        if indexer.changed:
            store.compact()
        from clipsearch.ann import AnnIndex, current

        if indexer.changed or not AnnIndex.saved(store.path, store.version):
            current(store)
        _retag(store)
    return summary


def _retag(store: Store) -> None:
    """Bring the tags up to date with the table: tag new content with the labels of the last
    `tag` run (no model needed, the label vectors are stored with the tags) and forget the tags
    of content no longer indexed. Checked by table version, so a run killed between its last
    commit and this step is caught up by the next one."""
    from clipsearch.tagging import Tagger, tag_store

    stored = store.read_tags(rows=False)
    if stored is not None and stored[1].get("table_version") != store.version:
        tag_store(store, Tagger.from_dict(stored[1]))
