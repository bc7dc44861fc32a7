"""An `index` run that finds nothing to do, told without opening what only a write needs.

Most runs over a library change nothing (a cron job, a habit, a script that indexes before it
searches). Such a run needs no model and no LanceDB (a second of start-up): the scan is compared
with the row snapshot of the version last committed (clipsearch.store.snapshot), which holds every
row's path, size, mtime and sidecar time. Only when every check holds is the run answered here;
anything else (a file added, changed or gone, a root offline or on another device, an older
index, a search structure or snapshot behind, a failed write to retry, the export neither made
nor being made) goes to the full run, which is the one that knows what to do about it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch import config
from clipsearch.models import exportjob, onnxtext
from clipsearch.results import IndexSummary
from clipsearch.store import derived


def check(db: Path, folders: Sequence[str], exclude: Sequence[str] = ()) -> IndexSummary | None:
    """The summary of an `index` run over `folders` (normalised roots) that would change nothing
    in the index at `db`, or None when it might change something."""
    from clipsearch.build import roots
    from clipsearch.media.scan import scan
    from clipsearch.store.ann import AnnIndex
    from clipsearch.store.snapshot import Snapshot
    from clipsearch.store.table import SCHEMA_VERSION

    started = time.monotonic()
    if not config.fast_query():
        return None  # no snapshot is kept up to date
    snapshot = Snapshot.open(db)
    if snapshot is None:
        return None
    manifest = snapshot.manifest
    model = manifest.model
    if (manifest.schema_version < SCHEMA_VERSION or not {"sidecar_ns", "pairs"} <= set(snapshot.names)
            or derived.failures(db) or not AnnIndex.saved(db, snapshot.version)):
        return None
    if not (onnxtext.exported(model) or onnxtext.unsupported(model) is not None
            or exportjob.running(model)):
        return None
    for folder in folders:
        if (folder not in manifest.roots or folder in manifest.offline
                or roots.device(folder) != manifest.root_devices.get(folder)):
            return None
    found = scan(folders, exclude)
    rows = snapshot.read(["path", "size", "mtime_ns", "sidecar_ns", "pairs"])
    paths = rows.column("path")
    under = np.zeros(len(rows), bool)
    for folder in folders:  # roots are folders: their photos are the paths below them
        under |= pc.starts_with(paths, folder.rstrip(os.sep) + os.sep).to_numpy(zero_copy_only=False)
    if int(under.sum()) != len(found):
        return None
    rows = rows.filter(pa.array(under))
    _paths, at, same = found.against(rows)
    # a file the index does not hold, or not as it holds it (its partners too)
    if not same.all() or found.stale_pairs(rows, at).any():
        return None
    return IndexSummary(unchanged=len(found), skipped=list(found.skipped), seconds=time.monotonic() - started)
