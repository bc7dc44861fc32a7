"""The torch-free query: an Index whose rows come from the snapshot (clipsearch.store.snapshot) and whose
query texts are encoded by the exported text tower (clipsearch.models.onnxtext). It is the same engine
and the same search code as every other path; only where the rows and the query vector come from
differs, so a one-off `clipsearch search` needs neither torch, open_clip nor LanceDB.

`prepare` makes what it needs: the export once per model for all of a user's indexes (about
10 s for ViT-B-32), and a snapshot for each committed version. Index runs and tag runs call it;
so does a search that had to take the full path, for indexes built before this existed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch import config
from clipsearch.models import onnxtext

if TYPE_CHECKING:
    from clipsearch.search.engine import Index


def keep_pandas_out() -> None:
    """pyarrow imports pandas, when it is installed, the first time a call looks for pandas
    objects among its arguments (0.27 s here, a quarter of a cold query), and remembers what it
    found; a query never hands it any. So pyarrow's first look is made here, while pandas
    cannot be imported, and it remembers pandas as absent. Anything else (a model loading
    later, for `similar` of an outside image) imports pandas as usual."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    from clipsearch.imports import kept_out

    with kept_out(["pandas"]):
        pa.array([0])


PENDING = ("note: this search loads the CLIP model (a few seconds) while fast searches are "
           "prepared: the text encoder is being exported, once per model")


def open_fast(db: Path, *, precision: str = "fp32", note: Callable[[str], None] = lambda _m: None,
              **options) -> Index | None:
    """The index at `db` on the fast path, or None when it has no current snapshot and export
    (the caller then opens it the usual way). `note` hears why a search is slow: the export
    being made, so that the query's vector comes from the CLIP model."""
    if not config.fast_query() or (precision or "fp32").lower() != "fp32":
        return None
    from clipsearch.search.engine import Index
    from clipsearch.store.ann import AnnIndex
    from clipsearch.store.snapshot import Snapshot

    snapshot = Snapshot.open(db)
    if snapshot is None:
        return None
    ann = AnnIndex.load(db, snapshot.version)
    if ann is None or ann.size != snapshot.count():
        return None  # the full path brings the search structure up to date
    encoder = onnxtext.open_for(snapshot.manifest.model)
    if encoder is None:
        from clipsearch.models import exportjob

        if not exportjob.running(snapshot.manifest.model):
            return None
        note(PENDING)
        # the export is being made (clipsearch.models.exportjob): the rows still come from the snapshot,
        # only the query's vector from the CLIP model until the export is there
    return Index(snapshot, text_encoder=encoder, ann=ann, precision="fp32", **options)
