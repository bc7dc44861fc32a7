"""The torch-free query: an Index whose rows come from the snapshot (clipsearch.snapshot) and whose
query texts are encoded by the exported text tower (clipsearch.onnxtext). It is the same engine
and the same search code as every other path; only where the rows and the query vector come from
differs, so a one-off `clipsearch search` needs neither torch, open_clip nor LanceDB.

`prepare` makes what it needs: the export once per model (about 10 s for ViT-B-32), and a
snapshot for each committed version. Index runs and tag runs call it; so does a search that had
to take the full path, for indexes built before this existed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch import config, derived, onnxtext

if TYPE_CHECKING:
    from clipsearch.engine import Index
    from clipsearch.models.base import Embedder
    from clipsearch.results import Unwritten
    from clipsearch.store import Store


def open_fast(db: Path, *, precision: str = "fp32", **options) -> Index | None:
    """The index at `db` on the fast path, or None when it has no current snapshot and export
    (the caller then opens it the usual way)."""
    if not config.fast_query() or (precision or "fp32").lower() != "fp32":
        return None
    from clipsearch.ann import AnnIndex
    from clipsearch.engine import Index
    from clipsearch.snapshot import Snapshot

    snapshot = Snapshot.open(db)
    if snapshot is None:
        return None
    ann = AnnIndex.load(db, snapshot.version)
    if ann is None or ann.size != snapshot.count():
        return None  # the full path brings the search structure up to date
    encoder = onnxtext.open_for(db, snapshot.manifest.model)
    if encoder is None:
        return None
    return Index(snapshot, text_encoder=encoder, ann=ann, precision="fp32", **options)


def needs_export(store: Store) -> bool:
    db, model = store.path, store.manifest.model
    return (config.fast_query() and model.get("backend", "open_clip") == "open_clip"
            and not onnxtext.exported(db, model) and onnxtext.unsupported(db, model) is None)


def prepare(store: Store, embedder: Callable[[], Embedder], note: Callable[[str], None] = lambda _m: None,
            retry: bool = False) -> tuple[onnxtext.OnnxTextEncoder | None, list[Unwritten]]:
    """Make the export (if the index has none yet) and the snapshot of the store's current
    version; return the export, opened (None if there is none), and what could not be written
    (clipsearch.derived: a write that failed is tried again only with `retry`, which index runs
    pass, or once the disk has the space it lacked). `embedder()` gives the CLIP model the export
    is made from; `note` hears about the export, which takes a while."""
    if not config.fast_query():
        return None, []
    db, model = store.path, store.manifest.model
    unwritten: list[Unwritten] = []
    encoder = onnxtext.open_for(db, model)
    if encoder is None and onnxtext.exported(db, model):
        note(f"the exported text encoder in {onnxtext.folder(db, model)} does not load; exporting it again")
        shutil.rmtree(onnxtext.folder(db, model), ignore_errors=True)
    if needs_export(store) and derived.may_write(db, derived.EXPORT, retry):
        note("preparing fast searches for this index: exporting the text encoder (once, about 10 s)")
        _export(store, embedder, unwritten)
        encoder = onnxtext.open_for(db, model)
    if encoder is not None and derived.may_write(db, derived.SNAPSHOT, retry):
        from clipsearch import snapshot

        try:
            snapshot.write(store)
        except OSError as exc:
            unwritten.append(derived.failed(db, derived.SNAPSHOT, db / snapshot.FOLDER,
                                            snapshot.size_estimate(store), exc))
        else:
            derived.succeeded(db, derived.SNAPSHOT)
    return encoder, unwritten


def _export(store: Store, embedder: Callable[[], Embedder], unwritten: list[Unwritten]) -> None:
    from clipsearch.models import load_embedder
    from clipsearch.models.export import NotExportable, export, size_estimate

    model = embedder()
    if getattr(model, "precision", None) != "fp32" or model.device != "cpu":
        model = load_embedder(model.spec, "cpu", "fp32")
    folder = onnxtext.folder(store.path, store.manifest.model)
    try:
        export(model, folder)
    except NotExportable as exc:
        onnxtext.mark_unsupported(store.path, store.manifest.model, str(exc))
    except (OSError, RuntimeError) as exc:
        if not isinstance(exc, OSError) and not derived.space_fault(exc):
            raise
        # a full or read-only index: the full path answers, and the failure is remembered
        unwritten.append(derived.failed(store.path, derived.EXPORT, folder, size_estimate(model), exc))
    else:
        derived.succeeded(store.path, derived.EXPORT)
