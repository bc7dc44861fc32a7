"""Measuring an index's retrieval and zero-shot quality through the product's own paths: the
dataset's images are indexed by the indexer, text queries go through `Index.page` (the
code `clipsearch search` runs, re-rank included), image queries use the vectors indexing stored,
and zero-shot labels are embedded and scored by the tagging module, as `clipsearch tag` does.

The gallery holds exactly the dataset's images: a folder of symlinks, one per image, is what gets
indexed, so a dataset inside a larger photo folder (Flickr30k's 1,000 test images among its
31,000) is measured against its own images only. With `db`, that folder and the index are kept,
and a second run (another precision for queries, --rerank) embeds nothing again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.errors import BadInputError
from clipsearch.eval.metrics import first_rank, median_rank, recall
from clipsearch.results import Progress, Skipped
from clipsearch.search.request import SearchRequest

if TYPE_CHECKING:
    from clipsearch.build.indexer import ProgressCallback
    from clipsearch.eval.datasets import CaptionSet, ClassSet
    from clipsearch.search.engine import Index

LINKS = "eval-images"
RANKED = 1000  # ranks past this count as not found (the median rank then reads "> 1000")


@dataclass
class Direction:
    """One way of querying: its recalls, median rank and speed."""

    recall: dict[str, float]
    median_rank: float | None
    queries: int
    seconds: float

    def to_dict(self) -> dict:
        return {**self.recall, "median_rank": self.median_rank, "queries": self.queries,
                "queries_per_second": round(self.queries / self.seconds, 2) if self.seconds else None}


@dataclass
class RetrievalReport:
    text_to_image: Direction
    image_to_text: Direction
    rerank: Direction | None
    images: int
    model: str
    precision: str
    candidates: int | None = None
    rerank_model: str | None = None
    skipped: list[Skipped] = field(default_factory=list)
    left_out: int = 0  # captions of skipped images
    embedded: int = 0
    words: bool = True  # the photos' words and BLIP captions ranked beside CLIP (--words on)
    caption_model: str | None = None  # what captioned the gallery first, if anything

    def to_dict(self) -> dict:
        return {"text_to_image": self.text_to_image.to_dict(), "image_to_text": self.image_to_text.to_dict(),
                "rerank": self.rerank.to_dict() if self.rerank else None,
                "queries": self.text_to_image.queries, "images": self.images, "model": self.model,
                "precision": self.precision, "candidates": self.candidates, "rerank_model": self.rerank_model,
                "skipped": [s.to_dict() for s in self.skipped], "captions_left_out": self.left_out,
                "embedded": self.embedded, "words": self.words, "caption_model": self.caption_model}


@dataclass
class ZeroShotReport:
    top1: float
    top5: float | None  # None with five classes or fewer, where it would always be 100 %
    tag_precision: float  # of the tags given at the threshold, the fraction that are right
    tag_recall: float  # of the images, the fraction whose class is among their tags
    threshold: float
    images: int
    classes: int
    model: str
    precision: str
    per_class: dict[str, float]  # top-1 accuracy of each class
    skipped: list[Skipped] = field(default_factory=list)
    embedded: int = 0

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "tag_precision": self.tag_precision,
                "tag_recall": self.tag_recall, "threshold": self.threshold, "images": self.images,
                "classes": self.classes, "model": self.model, "precision": self.precision,
                "per_class": self.per_class, "skipped": [s.to_dict() for s in self.skipped],
                "embedded": self.embedded}


@dataclass
class Gallery:
    index: Index
    item_of: dict[int, int]  # row id -> the dataset's image number
    skipped: dict[int, Skipped]  # image number -> why it is not in the index
    embedded: int  # images the model embedded for this run (0 when a kept index had them all)
    vectors: np.ndarray  # the stored vectors of the indexed images, in image-number order

    @property
    def ids(self) -> list[int]:
        """Row ids, in image-number order (the order of `vectors`)."""
        return sorted(self.item_of, key=self.item_of.get)


@contextlib.contextmanager
def gallery(images: Sequence[str], db: str | os.PathLike[str] | None = None, *,
            progress: ProgressCallback | None = None, **options) -> Iterator[Gallery]:
    """An index of exactly `images` (at `db`, else a throw-away one), opened for searching.
    `options` go to index_folders (model, pretrained, device, precision, batch_size, workers)
    and open_index (device, precision, rerank_model, rerank_precision); the precision, `auto`
    resolved for the device, is the images' and the queries' both."""
    from clipsearch import config
    from clipsearch.build.builder import index_folders
    from clipsearch.models import auto_precision, resolve_device, resolve_precision
    from clipsearch.search.engine import open_index

    if "embedder" not in options:  # images and queries in the same precision, auto resolved once
        device = resolve_device(options.get("device", "auto"))
        wanted = options.get("precision") or config.index_precision()
        options = {**options, "precision": resolve_precision(wanted, device, auto=auto_precision(device))}
    with tempfile.TemporaryDirectory(prefix="clipsearch-eval-") as scratch:
        # normalised as the indexer normalises its roots, so that row paths fall under `links`
        path = Path(os.path.abspath(os.path.expanduser(os.fspath(db)))) if db else Path(scratch) / "index"
        links = path / LINKS
        _check_own(path, links)
        _link(images, links)
        indexing = {k: options[k] for k in ("model", "pretrained", "device", "precision", "batch_size",
                                            "workers", "embedder") if k in options}
        # a throw-away gallery is searched here, in this process: the torch-free path's export
        # would cost each gallery about 10 s for nothing
        summary = index_folders([links], path, progress=progress, fast_path=db is not None, **indexing)
        index = open_index(path, **{k: options[k] for k in ("device", "precision", "rerank_model",
                                                            "rerank_precision", "embedder", "caption_model",
                                                            "caption_precision") if k in options})
        if options.get("caption_model"):  # every image captioned first (clipsearch.enrich.captions)
            from clipsearch.build.builder import open_builder

            with open_builder(path, create=False, embedder=index.embedder) as builder:
                builder.caption(captioner=index.captioner, progress=progress, prepare=db is not None)
            index.refresh()
        table, matrix = index.store.vectors(["id", "path"])  # one read, not a lookup per image
        mine = sorted((int(Path(path).stem), id_, row) for row, (id_, path) in enumerate(
            zip(table.column("id").to_pylist(), table.column("path").to_pylist(), strict=True))
            if Path(path).parent == links)
        item_of = {id_: item for item, id_, _ in mine}
        skipped = {int(Path(s.path).stem): Skipped(images[int(Path(s.path).stem)], s.reason)
                   for s in summary.skipped if Path(s.path).parent == links}
        if not item_of:
            first = next(iter(skipped.values()), None)
            why = f" ({first.path}: {first.reason})" if first else ""
            raise BadInputError(f"none of the dataset's {len(images)} images could be indexed{why}; "
                                "nothing to measure")
        yield Gallery(index, item_of, skipped, summary.embedded, matrix[[row for *_, row in mine]])


def _check_own(path: Path, links: Path) -> None:
    from clipsearch.store.table import Store

    if Store.exists(path):
        roots = Store.open(path).manifest.roots
        if any(Path(r) != links for r in roots):
            raise BadInputError(f"--db {path} indexes other folders ({', '.join(roots)}); eval needs an "
                                "index of its own: give it a new folder, or leave --db out")
    elif path.exists() and any(p.name != LINKS for p in path.iterdir()):
        raise BadInputError(f"--db {path} is a folder with other files in it; give eval a new folder")


def _link(images: Sequence[str], links: Path) -> None:
    """One symlink per image, named by its number: the folder that gets indexed."""
    links.mkdir(parents=True, exist_ok=True)
    wanted = {f"{i:07d}{os.path.splitext(p)[1].lower()}": p for i, p in enumerate(images)}
    for entry in os.scandir(links):
        if entry.name not in wanted or os.readlink(entry.path) != wanted[entry.name]:
            os.unlink(entry.path)
    for name, target in wanted.items():
        if not os.path.lexists(links / name):
            os.symlink(target, links / name)


def retrieval(data: CaptionSet, g: Gallery, *, rerank: bool = False, candidates: int | None = None,
              progress: ProgressCallback | None = None, words: bool = True) -> RetrievalReport:
    """Text-to-image and image-to-text recall of the gallery's index (and text-to-image after
    re-ranking): a caption is answered when its own image ranks within K, an image when any of
    its captions does. `words=False` ranks by pixels only (no captions, no EXIF or XMP words; file
    names never count: the gallery's links are named by number)."""
    from clipsearch import config

    report = progress or (lambda _p: None)
    index, item_of = g.index, g.item_of
    present = sorted(set(item_of.values()))
    queries = [(i, c) for i in present for c in data.captions[i]]

    def text_to_image(k: int, phase: str, after: list[int | None] | None = None) -> tuple[Direction, list]:
        """`after`: CLIP's ranks, for the answers a re-rank of the top k leaves out (a search
        that re-ranks k candidates lists them, then CLIP's order goes on)."""
        ranks, started = [], time.perf_counter()
        for done, (item, caption) in enumerate(queries, start=1):
            page = index.page(SearchRequest(caption, k=k, literal=True, rerank=after is not None,
                                            candidates=k, words=words))
            rank = first_rank([item_of.get(h.id, -1) for h in page.hits], {item})
            ranks.append(after[done - 1] if rank is None and after is not None else rank)
            report(Progress(phase, done, len(queries)))
        seconds = time.perf_counter() - started
        return Direction(recall(ranks), median_rank(ranks), len(queries), seconds), ranks

    clip, clip_ranks = text_to_image(min(len(item_of), RANKED), "text-to-image")
    reranked = None
    if rerank:
        candidates = candidates or config.DEFAULT_CANDIDATES
        reranked, _ = text_to_image(candidates, "re-rank", clip_ranks)

    started = time.perf_counter()
    ids = g.ids
    texts = index.embed_texts([c for _, c in queries])
    owner = np.array([item for item, _ in queries])
    ranks = []
    for row, vector in zip(ids, g.vectors, strict=True):
        order = np.argsort(-(texts @ vector), kind="stable")
        ranks.append(first_rank(owner[order].tolist(), {item_of[row]}))
    image_to_text = Direction(recall(ranks), median_rank(ranks), len(ids), time.perf_counter() - started)
    left_out = sum(len(data.captions[i]) for i in g.skipped)
    return RetrievalReport(clip, image_to_text, reranked, len(present), index.spec.describe(),
                           index.precision, candidates if rerank else None,
                           index.rerank_model if rerank else None, list(g.skipped.values()), left_out,
                           g.embedded, words, index.caption_model)


def zeroshot(data: ClassSet, g: Gallery, threshold: float) -> ZeroShotReport:
    """Top-1/top-5 accuracy of the class names as tags (the tagging module's prompt ensembles
    and background), and the precision and recall of the tags given at `threshold`."""
    from clipsearch.enrich.tagging import label_set

    index = g.index
    tagger = index.tagger(label_set(data.classes, threshold=threshold))
    ids = g.ids
    truth = np.array([data.labels[g.item_of[i]] for i in ids])
    probs = tagger.scores(g.vectors)
    order = np.argsort(-probs, axis=1, kind="stable")
    top1 = float(np.mean(order[:, 0] == truth))
    # with five classes or fewer every image's class is among its top five: no figure at all
    top5 = float(np.mean((order[:, :5] == truth[:, None]).any(axis=1))) if len(data.classes) > 5 else None
    rows, cols = tagger.choose(probs)
    right = int(np.sum(cols == truth[rows]))
    per_class = {name: float(np.mean(order[truth == c, 0] == c)) for c, name in enumerate(data.classes)
                 if np.any(truth == c)}
    return ZeroShotReport(top1, top5, right / len(rows) if len(rows) else 0.0, right / len(ids),
                          threshold, len(ids), len(data.classes), index.spec.describe(), index.precision,
                          per_class, list(g.skipped.values()), g.embedded)
