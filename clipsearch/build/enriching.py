"""The builder's writes of what is computed from a photo's content rather than read from its file:
tags (clipsearch.enrich.tagging) and captions (clipsearch.enrich.captions), each committed here
with the fast path's copy and the XMP sidecars asked for. The query side computes nothing it
stores: it hands its models in (a server's text encoder and captioner, run on its model thread)
or the builder loads its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from clipsearch import config
from clipsearch.errors import BadInputError
from clipsearch.results import CaptionSummary, ImageRecord, Skipped, TagSummary

if TYPE_CHECKING:
    import numpy as np

    from clipsearch.build.builder import Builder
    from clipsearch.enrich.tagging import LabelSet
    from clipsearch.models.captioner import Captioner
    from clipsearch.results import Progress

T = TypeVar("T")
Call = Callable[[Callable[[], T]], T]


def tag(builder: Builder, labels: LabelSet, embed_texts: Callable[[Sequence[str]], np.ndarray] | None,
        write_xmp: bool | None, per_image: bool) -> TagSummary:
    from clipsearch.enrich.tagging import Tagger, tag_store
    from clipsearch.enrich.xmp import write_sidecars

    started = time.perf_counter()
    tagger = Tagger.embed(labels, embed_texts or (lambda texts: builder.embedder().embed_texts(list(texts))))
    store = builder.store
    store.refresh()
    if write_xmp is not None and write_xmp != store.manifest.xmp_sidecars:
        store.manifest.xmp_sidecars = write_xmp
        store.save_manifest()
    sidecars = store.manifest.xmp_sidecars
    tagged = tag_store(store, tagger, per_image=per_image or sidecars)
    builder.prepare_fast()
    summary = TagSummary(labels.labels, tagged.per_image if per_image else [], scored=tagged.images,
                         untagged=tagged.untagged)
    if sidecars:
        ok = as_indexed(builder, [i.path for i in tagged.per_image if i.tags], summary.skipped)
        summary.sidecars_written = write_sidecars([i for i in tagged.per_image if i.path in ok],
                                                  summary.skipped)
    summary.seconds = time.perf_counter() - started
    return summary


def as_indexed(builder: Builder, paths: Sequence[str], skipped: list[Skipped]) -> set[str]:
    """Those of `paths` whose files are as indexed (size and modification time); the others
    go to `skipped`: a sidecar beside a file that is gone or changed would describe something
    the index has not seen."""
    wanted, ok, told = set(paths), set(), set()
    rows = builder.store.read(["path", "size", "mtime_ns"])
    for path, size, mtime in zip(rows.column("path").to_pylist(), rows.column("size").to_pylist(),
                                 rows.column("mtime_ns").to_pylist(), strict=True):
        if path not in wanted or path in ok or path in told:
            continue
        try:
            st = os.stat(path)
        except OSError:
            told.add(path)
            skipped.append(Skipped(path, "the photo is gone; no sidecar written"))
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            told.add(path)
            skipped.append(Skipped(path, "changed since it was indexed; no sidecar written until "
                                         "clipsearch index reads it again"))
        else:
            ok.add(path)
    return ok


def caption(builder: Builder, captioner: Captioner, folders: Sequence[str | os.PathLike[str]], *,
            limit: int | None, progress: Callable[[Progress], None] | None, batch_size: int,
            write_xmp: bool | None, prepare: bool, failed: set[str] | None, call: Call) -> CaptionSummary:
    from clipsearch.enrich.captions import caption_store
    from clipsearch.media.scan import normalize_root

    if limit is not None and limit < 1:
        raise BadInputError(f"--limit must be at least 1, not {limit}")
    roots = [normalize_root(f) for f in folders]
    store = builder.store
    store.refresh()
    summary, written = caption_store(store, captioner, roots, limit, progress, batch_size,
                                     config.default_workers(), call=call, failed=failed)
    if prepare:
        builder.prepare_fast()
    if write_xmp or (write_xmp is None and store.manifest.xmp_sidecars):
        from clipsearch.enrich.xmp import write_captions

        summary.sidecars_written = write_captions(written, summary.skipped)
    return summary


def caption_records(builder: Builder, records: Sequence[ImageRecord], captioner: Captioner,
                    call: Call) -> list[ImageRecord]:
    """`records` with their captions, captioning the contents that have none yet."""
    import dataclasses

    from clipsearch.enrich.captions import caption_hashes, of_hashes

    todo = {r.hash: [r.path] for r in records if r.caption is None}
    if not todo:
        return list(records)
    builder.store.refresh()
    caption_hashes(builder.store, captioner, list(todo.items()), call=call)
    builder.prepare_fast()
    found = of_hashes(builder.store, todo)
    return [dataclasses.replace(r, caption=found[r.hash]) if r.hash in found else r for r in records]
