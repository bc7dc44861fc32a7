"""What the torch-free query reads besides the table (clipsearch.search.fastpath): the text
encoder's export, once per model (clipsearch.models.exportjob), and the row snapshot of each
version (clipsearch.store.snapshot). Written by every commit, by `check`, and by a process that
searches on the full path (the next one then takes the fast path).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from clipsearch import config
from clipsearch.models import onnxtext
from clipsearch.store import derived

if TYPE_CHECKING:
    from clipsearch.models.base import Embedder
    from clipsearch.results import Unwritten
    from clipsearch.store.table import Store


def prepare_fast(store: Store, embedder: Callable[[], Embedder],
                 note: Callable[[str], None] = lambda _m: None, retry: bool = False, whole: bool = False,
                 open_export: bool = True, background: bool = False,
                 ) -> tuple[onnxtext.OnnxTextEncoder | None, list[Unwritten]]:
    """Make the export (if the index has none yet) and the snapshot of the store's current
    version; return the export, opened (None if there is none, or not `open_export`: a commit
    needs only to know it is there; opening it maps its weights), and what could not be written
    (clipsearch.store.derived: a write that failed is tried again only with `retry`, which index runs
    pass, or once the disk has the space it lacked). `embedder()` gives the CLIP model the export
    is made from; `note` hears about the export, which takes a while. With `background` the
    export is left to a job of its own (clipsearch.models.exportjob) and this returns at once; without,
    it is made here, or waited for if a job is making it. The snapshot is written as a delta
    over the last one when it can be (clipsearch.store.snapshot), or `whole`."""
    from clipsearch.models import exportjob

    if not config.fast_query():
        return None, []
    db, model = store.path, store.manifest.model
    unwritten: list[Unwritten] = []
    if (db / "fast").is_dir() and any((db / "fast").glob("text-*")):
        with exportjob.exporting(model):
            onnxtext.adopt(db, model)
    encoder = onnxtext.open_for(model) if open_export else None
    if open_export and encoder is None and onnxtext.exported(model):
        note(f"the exported text encoder in {onnxtext.folder(model)} does not load; exporting it again")
        shutil.rmtree(onnxtext.folder(model), ignore_errors=True)
    pending = False
    if exportjob.needs_export(store) and derived.may_write(db, derived.EXPORT, retry):
        if background and exportjob.start(db, model):
            pending = True
        else:
            with exportjob.exporting(model):  # after a job that is making it, if there is one
                if exportjob.needs_export(store):
                    note("preparing fast searches for this model: exporting the text encoder "
                         "(once per model, about 10 s)")
                    exportjob.export(db, model, embedder, unwritten)
            encoder = onnxtext.open_for(model) if open_export else None
    exported = encoder is not None or (not open_export and onnxtext.exported(model))
    if (exported or pending) and derived.may_write(db, derived.SNAPSHOT, retry):
        from clipsearch.store import snapshot

        try:
            snapshot.write(store, whole)
        except OSError as exc:
            unwritten.append(derived.failed(db, derived.SNAPSHOT, db / snapshot.FOLDER,
                                            snapshot.size_estimate(store), exc))
        else:
            derived.succeeded(db, derived.SNAPSHOT)
    return encoder, unwritten


def prepare_searches(store: Store, embedder: Callable[[], Embedder],
                     note: Callable[[str], None] = lambda _m: None,
                     background: bool = False) -> tuple[onnxtext.OnnxTextEncoder | None, bool]:
    """`prepare_fast` for a process that searches without holding the writer's lock (a search
    on the full path, a server): what it writes is made from a committed version only, each
    file whole or not at all. (The export, opened; whether a job of its own is making the
    export now, with `background`.)"""
    from clipsearch.models import exportjob

    encoder, _unwritten = prepare_fast(store, embedder, note, background=background)
    model = store.manifest.model
    return encoder, background and not onnxtext.exported(model) and exportjob.running(model)
