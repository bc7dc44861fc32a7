"""`clipsearch check`: verify every file made from the table (the text encoder export, the row
snapshot, the search structure, cached thumbnails) against the checksum recorded when it was
written, rebuild what is damaged or missing, and say what was done, as `git fsck` or
`restic check` do. The table itself is the truth and is only read.

A file written before checksums were kept is checked by loading it (and, for the export, by
comparing its vectors with the CLIP model's), then given its checksum.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch import config
from clipsearch.models import onnxtext
from clipsearch.store import derived
from clipsearch.store.table import MANIFEST_COPY, Store

if TYPE_CHECKING:
    from clipsearch.build.builder import Builder

_SUM_TOLERANCE = 1e-4  # an unrecorded export's vectors against the CLIP model's


@dataclass(frozen=True)
class Checked:
    """One derived file (or group of files): `status` as found (ok, damaged, missing,
    unrecorded), `action` what check did (none, rebuilt, removed, recorded, failed: ...)."""

    what: str
    path: str
    status: str
    action: str = "none"

    @property
    def healthy(self) -> bool:
        return not self.action.startswith("failed")


@dataclass
class CheckReport:
    db: str
    items: list[Checked] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.healthy for i in self.items)

    def to_dict(self) -> dict:
        return {"db": self.db, "ok": self.ok, "items": [asdict(i) for i in self.items]}


def check(builder: Builder, thumbnails: bool = True,
          note: Callable[[str], None] = lambda _m: None) -> CheckReport:
    """Check (and repair) the derived files of the index `builder` writes (its CLIP model, fp32,
    judges an export that has no checksums yet)."""
    from clipsearch.store import ann, snapshot

    store: Store = builder.store
    report = CheckReport(str(store.path))
    store.refresh()
    report.items.append(_manifest_copy(store))
    report.items.extend(_search_structure(store, ann))
    report.items.extend(_export_and_snapshot(builder, store, snapshot, note))
    if thumbnails:
        report.items.append(_thumbnails())
    return report


def _manifest_copy(store: Store) -> Checked:
    copy = store.path / MANIFEST_COPY
    if copy.is_file():
        return Checked("manifest copy", str(copy), "ok")
    store.save_manifest()  # an index from before the copy was kept
    return Checked("manifest copy", str(copy), "missing", "rebuilt")


def _search_structure(store: Store, ann) -> list[Checked]:
    """The files a search of the current version reads: a base, or a base and its delta."""
    found = [(path, derived.verify_sum(path)) for path in ann.AnnIndex.files(store.path, store.version)]
    if any(status == "unrecorded" for _, status in found):
        loaded = ann.AnnIndex.load(store.path, store.version)
        whole = loaded is not None and loaded.size == store.count()
        for path, status in found:
            if status == "unrecorded" and whole:
                derived.record_sum(path)
        found = [(p, "damaged" if s == "unrecorded" and not whole else s) for p, s in found]
    bad = [path for path, status in found if status in ("damaged", "missing")]
    for path in bad:
        derived.remove(path)
    unwritten: list = []
    if bad:
        ann.current(store, retry=True, unwritten=unwritten)
    done = {"unrecorded": "recorded", "ok": "none"}
    return [Checked(derived.SEARCH, str(path), status,
                    _outcome(unwritten, path) if path in bad else done[status]) for path, status in found]


def _export_and_snapshot(builder: Builder, store: Store, snapshot,
                         note: Callable[[str], None]) -> list[Checked]:
    from clipsearch.build.fastprep import prepare_fast
    from clipsearch.models.exportjob import needs_export

    if not config.fast_query():
        return []
    model = store.manifest.model
    folder = onnxtext.folder(model)
    found: list[Checked] = []
    export = None
    if onnxtext.exported(model):
        status = _export_status(builder, folder)
        export = Checked(derived.EXPORT, str(folder), status, "none" if status == "ok" else "rebuilt")
        if status == "unrecorded-ok":
            export = Checked(derived.EXPORT, str(folder), "unrecorded", "recorded")
        elif status != "ok":
            shutil.rmtree(folder, ignore_errors=True)
    elif needs_export(store):
        export = Checked(derived.EXPORT, str(folder), "missing", "rebuilt")
    rows = []
    for path in snapshot.files(store.path):
        status = derived.verify_sum(path)
        if status == "unrecorded":
            table = snapshot._read(path)
            status = "damaged" if table is None else "unrecorded"
            if table is not None:
                derived.record_sum(path)
        if status in ("damaged", "missing"):
            derived.remove(path)
        rows.append((path, status))
    _encoder, unwritten = prepare_fast(store, builder.embedder, note, retry=True)
    if export is not None:
        if export.action == "rebuilt":
            export = Checked(export.what, export.path, export.status, _outcome(unwritten, folder))
        found.append(export)
    for path, status in rows:
        action = {"ok": "none", "unrecorded": "recorded"}.get(status) or _outcome(unwritten, path)
        found.append(Checked(derived.SNAPSHOT, str(path), status, action))
    return found


def _export_status(builder: Builder, folder: Path) -> str:
    """ok, damaged, missing, or unrecorded-ok (old export, checked against the CLIP model and
    given its checksums) for the export in `folder`."""
    statuses = {derived.verify_sum(p) for p in folder.iterdir() if not p.name.endswith(derived.SUM)}
    for bad in ("damaged", "missing"):
        if bad in statuses:
            return bad
    if statuses == {"ok"}:
        return "ok"
    import numpy as np

    from clipsearch.models.export import CHECK_TEXTS

    try:
        theirs = onnxtext.OnnxTextEncoder(folder).embed_texts(CHECK_TEXTS)
    except Exception:
        return "damaged"
    if float(np.abs(theirs - builder.embedder().embed_texts(CHECK_TEXTS)).max()) > _SUM_TOLERANCE:
        return "damaged"
    for path in folder.iterdir():
        if not path.name.endswith(derived.SUM):
            derived.record_sum(path)
    return "unrecorded-ok"


def _outcome(unwritten: list, path: Path) -> str:
    for failure in unwritten:
        if os.fspath(path).startswith(failure.path) or failure.path.startswith(os.fspath(path)):
            return f"failed: {failure.reason}"
    return "rebuilt"


def _thumbnails() -> Checked:
    from clipsearch.media.thumbnails import Thumbnails

    cache = Thumbnails()
    checked, removed = cache.verify()
    folder = str(config.cache_folder(config.THUMBNAILS))
    if not removed:
        return Checked(f"thumbnails ({checked})", folder, "ok")
    return Checked(f"thumbnails ({checked})", folder, f"damaged ({removed})",
                   "removed (each is made again when shown)")
