"""The build side: the one pipeline that writes an index. Plan (a full scan of folders, or a set
of paths known to have changed, into a diff) -> compute (read, hash, decode, embed; here or
through the Ray fan-out) -> commit (rows, then what searches read besides them: the search
structure's delta, the row snapshot's delta, tags, XMP sidecars).

A Builder is long-lived: `index` runs it once over folders; a watcher runs `update` for each
batch of changed paths, and each commit costs what it changed, not the library's size
(clipsearch.store.layers). The table's own files are merged only when that pays
(Store.compaction_due) or when asked (`compact`). It is also the one writer of what is computed
from content (tags, captions: clipsearch.build.enriching) and of the derived files (`check`); the
query side only reads, and hands its models in where a process has them loaded already.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from clipsearch import config
from clipsearch.build.fastprep import prepare_fast
from clipsearch.config import db_path
from clipsearch.errors import BadInputError, ModelMismatchError
from clipsearch.media.scan import is_under, normalize_root, size_and_mtime
from clipsearch.models import (
    ModelSpec,
    check_weights_unchanged,
    load_embedder,
    onnxtext,
    parse_model_spec,
    weights_stat,
)
from clipsearch.results import CompactSummary, ForgetSummary, ImageTags, IndexSummary, Progress
from clipsearch.store.table import Manifest, Store, lock_dir

if TYPE_CHECKING:
    import numpy as np

    from clipsearch.build.check import CheckReport
    from clipsearch.build.distributed import RayOptions
    from clipsearch.build.indexer import Fanout, Indexer, ProgressCallback
    from clipsearch.enrich.tagging import LabelSet
    from clipsearch.models.base import Embedder
    from clipsearch.models.captioner import Captioner
    from clipsearch.results import CaptionSummary, ImageRecord, TagSummary


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


class Builder:
    """The writer of one index, opened by `open_builder` (which holds the writer's lock)."""

    def __init__(self, store: Store, spec: ModelSpec, *, device: str = "auto", precision: str = "fp32",
                 batch_size: int = config.DEFAULT_BATCH_SIZE, workers: int | None = None,
                 progress: ProgressCallback | None = None, embedder: Embedder | None = None,
                 commit_every: int = config.COMMIT_EVERY, fanout: Fanout | None = None,
                 commit_seconds: float = config.COMMIT_SECONDS) -> None:
        self.store = store
        # whether the text export is left to a job of its own (clipsearch.models.exportjob): what the
        # CLI's `index` does, so that it ends when the rows are searchable
        self.background_export = False
        # whether a commit prepares the torch-free query path (export and snapshot): not for a
        # throw-away index that no new process will search (eval's galleries)
        self.fast_path = True
        self._images_only = False
        self._owns_embedder = False  # an embedder handed in is the caller's (a server's): kept whole
        self._captioner: Captioner | None = None
        self._caption_choice: tuple[str | None, str] = (None, "auto")
        self.spec = spec
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.workers = config.default_workers() if workers is None else workers
        self.progress = progress
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.fanout = fanout
        self._embedder = embedder

    def embedder(self) -> Embedder:
        """The CLIP model, loaded the first time something needs it (an unchanged folder never
        does)."""
        if self._embedder is None:
            check_weights_unchanged(self.spec, self.store.manifest.weights_stat)
            self._embedder = load_embedder(self.spec, self.device, self.precision)
            self._owns_embedder = True
            if self._images_only:
                self._embedder.drop_text_tower()
        return self._embedder

    def embed_images_only(self, owns_embedder: bool = False) -> None:
        """This builder embeds nothing but images (its export is left to a job): the model it
        loads keeps no text tower (ViT-B-32: 127 MB of bf16 weights less while it embeds).
        `owns_embedder`: the one it was given was loaded for it, and may lose its text tower too."""
        self._images_only = True
        self._owns_embedder = self._owns_embedder or owns_embedder
        if self._embedder is not None and self._owns_embedder and self._embedder.has_text:
            self._embedder.drop_text_tower()

    def share_embedder(self, embedder: Embedder) -> None:
        """Embed with a model already loaded (a server's: one copy of CLIP for both sides)."""
        if embedder.spec.same_model(self.spec):
            self._embedder = embedder

    # -- plan, compute, commit ------------------------------------------------------------------
    def index(self, folders: Sequence[str], exclude: Sequence[str] = (), compact: bool = False,
              prune_offline: bool = False, keep_empty: bool = False) -> IndexSummary:
        """Scan `folders` (normalised roots) and bring their rows up to date; they become roots
        of the index, except a new one that holds nothing indexable (a mistyped folder would be
        watched forever), unless `keep_empty`. `compact` merges the table's files and the
        structures' deltas whatever they cost (otherwise only when it pays). The rows under a
        root that looks offline (clipsearch.build.roots) are kept, unless `prune_offline`."""
        from clipsearch.store.table import under_sql

        filled = self.fill_words(folders) + self.rename_places()
        indexer = self._indexer()
        indexer.keep_offline = not prune_offline
        # patterns once given stay: a later run (a watcher's start-up scan) must not add them back
        patterns = list(dict.fromkeys([*self.store.manifest.exclude, *exclude]))
        self.store.manifest.exclude = patterns
        summary = indexer.run(folders, patterns)
        summary.words_filled = filled
        new = [f for f in folders if f not in self.store.manifest.roots]
        if not keep_empty and new:
            summary.empty = [f for f in new if not self.store.read(["id"], under_sql([f])).num_rows]
            folders = [f for f in folders if f not in summary.empty]
        self._note_roots(folders, indexer.offline, indexer.mounts)
        summary.offline = dict(indexer.offline)
        self.store.manifest.roots = sorted(set(self.store.manifest.roots) | set(folders))
        self.store.save_manifest()
        return self._commit(indexer, summary, compact, changed=bool(filled), in_place=bool(filled))

    def update(self, paths: Sequence[str]) -> IndexSummary:
        """Bring the rows of these paths up to date: files or folders added, changed or removed
        (absolute paths; what a watcher saw), without walking anything else. Nothing is removed
        under a root that is missing or empty."""
        filled = self.fill_words() + self.rename_places()
        indexer = self._indexer()
        summary = indexer.run_paths([os.path.abspath(p) for p in paths], self.store.manifest.roots)
        summary.offline = dict(indexer.offline)
        summary.words_filled = filled
        return self._commit(indexer, summary, False, changed=bool(filled), in_place=bool(filled))

    def fill_words(self, roots: Sequence[str] = ()) -> int:
        """Give the rows of an index from before the word columns (schema 1) their words, read
        from the files (and their sidecars) with no embedding; a search meanwhile works as
        before. Committed a batch at a time: an interrupted fill goes on where it stopped.
        Returns how many rows were filled."""
        from clipsearch.media.exif import Meta
        from clipsearch.media.words import read_meta, sidecar_mtime, word_columns, word_rows
        from clipsearch.store.table import SCHEMA_VERSION

        store = self.store
        if (store.manifest.schema_version >= SCHEMA_VERSION and store.has_words and store.has_video
                and store.has_pairs):
            return 0
        store.add_word_columns()
        all_roots = list(dict.fromkeys([*roots, *store.manifest.roots]))
        filled = 0
        pending = sorted(store.read(["id"], "words IS NULL").column("id").to_pylist())
        for start in range(0, len(pending), 512):
            table = store.fetch(pending[start:start + 512], store.names)
            paths, taken = table.column("path").to_pylist(), table.column("taken").to_pylist()
            items = [(p, read_meta(p) if os.path.isfile(p) else Meta(), t, sidecar_mtime(p))
                     for p, t in zip(paths, taken, strict=True)]
            for name, column in word_columns(word_rows(items, all_roots)).items():
                table = table.set_column(table.schema.get_field_index(name), name, column)
            store.replace(table)
            filled += table.num_rows
            if self.progress:
                self.progress(Progress("words", filled, len(pending)))
        store.manifest.schema_version = SCHEMA_VERSION
        store.save_manifest()
        return filled

    def rename_places(self) -> int:
        """Name the places of rows indexed before the current naming (store.PLACES_VERSION) again,
        from their stored GPS positions: no file is read. Returns how many rows changed."""
        from clipsearch.media import places
        from clipsearch.store.table import PLACES_VERSION

        store = self.store
        if store.manifest.places_version >= PLACES_VERSION:
            return 0
        changed = 0
        if store.has_words:
            rows = store.read(["id", "lat", "lon", "place"], "lat IS NOT NULL AND lon IS NOT NULL")
            ids, lats, lons, old = (rows.column(c).to_pylist() for c in ("id", "lat", "lon", "place"))
            named = places.names(list(zip(lats, lons, strict=True)))
            ids_by_value: dict[str | None, list[int]] = {}
            for id_, was, parts in zip(ids, old, named, strict=True):
                if (now := places.shown(parts)) != was:
                    ids_by_value.setdefault(now, []).append(id_)
            if ids_by_value:
                store.set_values("place", ids_by_value)
            changed = sum(map(len, ids_by_value.values()))
        store.manifest.places_version = PLACES_VERSION
        store.save_manifest()
        return changed

    def move_root(self, old: str, new: str) -> IndexSummary:
        """The library at `old` is now at `new` (a new disk, a renamed folder): its rows are
        re-pointed without reading a file whose size and mtime are as indexed, and the rest of
        `new` is brought up to date as `index` would (moved content is found by its hash, so
        nothing indexed is embedded again). `new` replaces `old` among the roots."""
        import numpy as np
        import pyarrow as pa

        from clipsearch.store.kept import Kept, columns
        from clipsearch.store.table import under_sql

        store, old, new = self.store, os.path.abspath(old).rstrip(os.sep), normalize_root(new)
        if is_under(new, old) or is_under(old, new):
            raise BadInputError(f"{new} and {old} hold one another; move a library to a separate folder")
        rows = store.read(store.names, under_sql([old]))
        if not len(rows) and old not in store.manifest.roots:
            raise BadInputError(f"the index holds nothing under {old}; `clipsearch roots` lists its roots")
        paths = rows.column("path").to_pylist()
        moved = [new + p[len(old):] for p in paths]
        same = np.array([size_and_mtime(m) == (size, mtime) for m, size, mtime in zip(
            moved, rows.column("size").to_pylist(), rows.column("mtime_ns").to_pylist(), strict=True)], bool)
        # a path already indexed under `new` (the library copied there and indexed, then moved)
        # keeps its own row: a second one would show every such photo twice
        present = set(store.read(["path"], under_sql([new])).column("path").to_pylist())
        taken = np.array([m in present for m in moved], bool)
        kept = rows.filter(pa.array(same & ~taken))
        if len(kept):
            first = store.manifest.next_id or store.highest_id() + 1
            store.manifest.next_id = first + len(kept)
            store.save_manifest()  # before the rows: an id is never handed out twice
            kept = kept.set_column(0, "id", pa.array(range(first, first + len(kept)), pa.int64()))
            kept = kept.set_column(1, "path", pa.array(
                [m for m, k in zip(moved, same & ~taken, strict=True) if k], pa.string()))
            if store.has_words:  # their names and folders say the new place; the rest stays
                from clipsearch.media.words import repath

                roots = [new, *store.manifest.roots]
                words = [repath(w, p, roots) for w, p in zip(kept.column("words").to_pylist(),
                                                             kept.column("path").to_pylist(), strict=True)]
                kept = kept.set_column(kept.schema.get_field_index("words"), "words",
                                       pa.array(words, pa.list_(pa.string())))
            store.add(kept)
        # found by its hash if it is there
        Kept(store).keep(rows.filter(pa.array(~same & ~taken)).select(columns(store)))
        store.delete_paths(paths)
        manifest = store.manifest
        manifest.roots = sorted({new if r == old else r for r in manifest.roots} | {new})
        manifest.offline.pop(old, None)
        manifest.root_devices.pop(old, None)
        store.save_manifest()
        summary = self.index([new])
        # each photo counted once, as the user sees the move: the re-pointed ones, which the scan
        # found unchanged, moved; those whose time changed on the way, which the scan added back
        # from their kept vectors, moved too (or updated, when their content changed)
        repointed = len({p for p, k in zip(paths, same, strict=True) if k})  # a video's frames: one
        summary.moved += repointed
        summary.unchanged = max(0, summary.unchanged - repointed)
        rest = {m: h for m, h, k in zip(moved, rows.column("hash").to_pylist(), ~same & ~taken, strict=True)
                if k}
        found = store.by_paths(list(rest), ["path", "hash"]) if rest else None
        back = dict(zip(found.column("path").to_pylist(), found.column("hash").to_pylist(),
                        strict=True)) if found is not None else {}
        for path, digest in back.items():
            summary.added -= 1
            if digest == rest[path]:
                summary.moved += 1
            else:
                summary.updated += 1
        return summary

    def _note_roots(self, folders: Sequence[str], offline: dict[str, str], mounts: dict[str, int]) -> None:
        """Remember each root's device while it is there, and since when one is offline; and the
        nested mounts under the scanned `folders` (those away stay remembered)."""
        from clipsearch.build import roots

        manifest = self.store.manifest
        manifest.mounts = {**{m: d for m, d in manifest.mounts.items()
                              if m in offline or not any(is_under(m, f) for f in folders)}, **mounts}
        for root in folders:
            if root in offline:
                manifest.offline.setdefault(root, roots.now_iso())
            else:
                manifest.offline.pop(root, None)
                if (dev := roots.device(root)) is not None:
                    manifest.root_devices[root] = dev

    def remove_root(self, root: str) -> IndexSummary:
        """`root` is no longer indexed: its rows go (their vectors kept a while, as for any
        removed photo: clipsearch.store.kept), and it leaves the roots; its files are not touched."""
        from clipsearch.store.kept import Kept, columns
        from clipsearch.store.table import under_sql

        store, root = self.store, os.path.abspath(os.path.expanduser(root)).rstrip(os.sep)
        manifest = store.manifest
        if root not in manifest.roots:
            raise BadInputError(f"{root} is not a root of this index; its roots: "
                                f"{', '.join(manifest.roots) or 'none'} (clipsearch roots lists them)")
        rows = store.read(["path", *columns(store)], under_sql([root]))
        paths = sorted(set(rows.column("path").to_pylist()))
        Kept(store).keep(rows.select(columns(store)))
        store.delete_paths(paths)
        manifest.roots = [r for r in manifest.roots if r != root]
        manifest.offline.pop(root, None)
        manifest.root_devices.pop(root, None)
        manifest.mounts = {m: d for m, d in manifest.mounts.items() if not is_under(m, root)}
        store.save_manifest()
        return self._commit(None, IndexSummary(removed=len(paths)), False, changed=True)

    def include(self, pattern: str) -> list[str]:
        """Stop leaving out what `pattern` (an --exclude given before) matches; the exclusions left.
        The next index run adds what it had left out."""
        manifest = self.store.manifest
        if pattern not in manifest.exclude:
            raise BadInputError(f"{pattern!r} is not an exclusion of this index; its exclusions: "
                                f"{', '.join(repr(p) for p in manifest.exclude) or 'none'}")
        manifest.exclude = [p for p in manifest.exclude if p != pattern]
        self.store.save_manifest()
        return list(manifest.exclude)

    def compact(self) -> CompactSummary:
        """Merge the table's files and fold the structures' deltas into their bases, now
        (`clipsearch optimize`, in this process or as a server's job)."""
        import time

        started, before = time.perf_counter(), self.store.disk_bytes()
        self._commit(None, IndexSummary(), True)
        return CompactSummary(str(self.store.path), before, self.store.disk_bytes(),
                              time.perf_counter() - started)

    def forget(self, paths: Sequence[str]) -> ForgetSummary:
        """Remove these photos (absolute paths of files, or folders: what is under them; or bare
        file names, every indexed file of that name) for good, now: their rows, their kept
        vectors (clipsearch.store.kept), and the cached thumbnails and re-rank features of content no
        other row holds. One that matches nothing is a BadInputError, and nothing is removed."""
        from clipsearch.store.kept import Kept
        from clipsearch.store.table import under_sql

        store = self.store
        found: dict[str, str] = {}
        for given in paths:
            rows = (store.by_name(given, ["path", "hash"]) if os.sep not in given
                    else store.read(["path", "hash"], under_sql([os.path.abspath(given)])))
            if not rows.num_rows:
                raise BadInputError(
                    f"{given}: no indexed photo is this file, lies under this folder or has this name, "
                    "so nothing was forgotten; `clipsearch search NAME` finds photos by their names")
            found.update(zip(rows.column("path").to_pylist(), rows.column("hash").to_pylist(), strict=True))
        forgotten, hashes = sorted(found), sorted(set(found.values()))
        summary = ForgetSummary(len(forgotten), on_disk=[p for p in forgotten if os.path.exists(p)])
        if not forgotten:
            return summary
        store.delete_paths(forgotten)
        Kept(store).forget(hashes)
        held = set(store.by_hashes(hashes, ["hash"]).column("hash").to_pylist())
        gone = [h for h in hashes if h not in held]
        store.forget_captions(gone)
        summary.cache_files = _drop_cached(gone)
        self._commit(None, IndexSummary(), False, changed=True)
        return summary

    # -- what is computed from the content: tags, captions (clipsearch.build.enriching) ----------------
    def tag(self, labels: LabelSet | str | Sequence[str] | None = None, *,
            labels_file: str | os.PathLike[str] | None = None, threshold: float = 0.5, top: int | None = None,
            write_xmp: bool | None = None, per_image: bool = True,
            embed_texts: Callable[[Sequence[str]], np.ndarray] | None = None) -> TagSummary:
        """Tag every indexed image with the labels that fit (clipsearch.enrich.tagging), replacing the
        previous tags in one commit; optionally merge the tags into XMP sidecars.

        `labels` is a LabelSet, or 'a,b,c' / a list (with `labels_file`, `threshold`, `top` as
        in clipsearch.enrich.tagging.label_set); neither means the built-in photo subjects. Later
        runs tag new images with the same labels, threshold and top, and, when `write_xmp` was
        True (the index remembers it; None keeps the last choice), write their sidecars.
        `per_image=False` leaves the summary's per-image list empty (a million entries at a
        million images). `embed_texts`: the text encoder that embeds the labels' prompts (a
        server's, on its model thread); by default this builder's CLIP model."""
        from clipsearch.build import enriching
        from clipsearch.enrich.tagging import LabelSet, label_set

        if not isinstance(labels, LabelSet):
            labels = label_set(labels, labels_file, threshold, top)
        return enriching.tag(self, labels, embed_texts, write_xmp, per_image)

    def caption(self, folders: Sequence[str | os.PathLike[str]] = (), *, captioner: Captioner | None = None,
                limit: int | None = None, progress: Callable[[Progress], None] | None = None,
                batch_size: int = 8, write_xmp: bool | None = None, prepare: bool = True,
                failed: set[str] | None = None, call: Callable | None = None) -> CaptionSummary:
        """Caption the indexed photos under `folders` (all when empty) that have no caption
        from `captioner` (by default this builder's: `use_captioner`) yet, or a stale one, at
        most `limit`; resumable, committed every few seconds (clipsearch.enrich.captions). With
        sidecars asked for (`tag --write-xmp`, or `write_xmp`), each caption also goes into its
        photos' XMP sidecars as clipsearch's own description. `failed`: hashes not to try, to
        which those it cannot read are added. `call(work)` runs each batch's model work (a
        server's runs it on a thread of low priority)."""
        from clipsearch.build import enriching

        return enriching.caption(self, captioner or self.captioner, folders, limit=limit, progress=progress,
                                 batch_size=batch_size, write_xmp=write_xmp, prepare=prepare, failed=failed,
                                 call=call or (lambda work: work()))

    def caption_records(self, records: Sequence[ImageRecord], captioner: Captioner | None = None,
                        call: Callable | None = None) -> list[ImageRecord]:
        """`records` (the query side's, e.g. Index.about) with their captions, captioning those
        that have none yet."""
        from clipsearch.build import enriching

        return enriching.caption_records(self, records, captioner or self.captioner,
                                         call or (lambda work: work()))

    def use_captioner(self, model: str | None = None, precision: str = "auto") -> None:
        """The captioner this builder loads when none is handed in (None: BLIP's default)."""
        self._caption_choice, self._captioner = (model, precision), None

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            from clipsearch.enrich.captions import DEFAULT_MODEL
            from clipsearch.models.captioner import load_captioner

            model, precision = self._caption_choice
            self._captioner = load_captioner(model or DEFAULT_MODEL, self.device, precision)
        return self._captioner

    # -- what searches read besides the rows -------------------------------------------------------
    def prepare_fast(self, note: Callable[[str], None] = lambda _m: None,
                     background: bool = False) -> onnxtext.OnnxTextEncoder | None:
        """Make what the torch-free query path needs for the current version (the text export
        once per model, a row snapshot per version: clipsearch.build.fastprep); the export, opened."""
        return prepare_fast(self.store, self.embedder, note, background=background)[0]

    def check(self, thumbnails: bool = True, note: Callable[[str], None] = lambda _m: None) -> CheckReport:
        """Verify the files made from the table (export, snapshot, search structure, cached
        thumbnails) against their recorded checksums and rebuild what is damaged or missing
        (clipsearch.build.check); `note` hears about a re-export, which takes a while."""
        from clipsearch.build.check import check

        return check(self, thumbnails, note)

    def _indexer(self) -> Indexer:
        from clipsearch.build.indexer import Indexer

        return Indexer(self.store, self.embedder, batch_size=self.batch_size, workers=self.workers,
                       progress=self.progress, commit_every=self.commit_every, fanout=self.fanout,
                       commit_seconds=self.commit_seconds)

    def _commit(self, indexer: Indexer | None, summary: IndexSummary, compact: bool, changed: bool = False,
                in_place: bool = False) -> IndexSummary:
        """After the rows: what searches read besides them, each written as a delta when the
        rows changed, and merged when due or asked. `in_place`: rows were rewritten keeping
        their ids (words filled, places renamed), which a delta of ids added and removed misses."""
        from clipsearch.store import ann

        store = self.store
        changed = changed or (indexer is not None and indexer.changed)
        in_place = in_place or (indexer is not None and indexer.in_place)
        if compact or (changed and store.compaction_due()):
            store.compact()
        elif changed:
            store.ensure_lookups()
        ann.commit(store, retry=True, unwritten=summary.unwritten, fold=compact)
        _retag(store, indexer)
        if indexer is not None:
            _sidecars_of_new_rows(store, indexer.written, summary)

        def exporting(_message: str) -> None:
            if self.progress:
                self.progress(Progress("prepare", 0, 1))

        if self.fast_path:
            summary.unwritten += prepare_fast(store, self.embedder, exporting, retry=True,
                                              whole=compact or in_place, open_export=False,
                                              background=self.background_export)[1]
        return summary


@contextlib.contextmanager
def open_builder(
    db: str | os.PathLike[str] | None = None, *, model: str | None = None, pretrained: str | None = None,
    device: str = "auto", precision: str | None = None, batch_size: int = config.DEFAULT_BATCH_SIZE,
    workers: int | None = None, progress: ProgressCallback | None = None, embedder: Embedder | None = None,
    commit_every: int = config.COMMIT_EVERY, ray: RayOptions | None = None, fanout: Fanout | None = None,
    commit_seconds: float = config.COMMIT_SECONDS, create: bool = True,
) -> Iterator[Builder]:
    """The index at `db` (created with this model if there is none, unless not `create`: then
    IndexNotFoundError), opened for writing: the writer's lock is held until the block ends.
    Arguments as in `index_folders`."""
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, not {batch_size}")
    precision = precision or config.index_precision()
    path = db_path(db)
    with contextlib.ExitStack() as held:
        if ray is not None:
            from clipsearch.build.distributed import session

            # at once: a missing extra or an unreachable cluster is told before any work
            held.enter_context(session(ray))
            worker_device, device = device, "cpu"  # the driver's own loads leave GPUs to the workers
        if not create and not Store.exists(path):
            Store.open(path)  # says there is none, before a lock file is made where it would be
        held.enter_context(lock_dir(path))
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
        if ray is not None:
            from clipsearch.build.distributed import embed

            fanout = functools.partial(embed, options=ray, spec=spec.to_dict(), device=worker_device,
                                       precision=precision, batch_size=batch_size)
        yield Builder(store, spec, device=device, precision=precision, batch_size=batch_size,
                      workers=workers, progress=progress, embedder=embedder, commit_every=commit_every,
                      fanout=fanout, commit_seconds=commit_seconds)


def index_folders(
    roots: Sequence[str | os.PathLike[str]],
    db: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = config.DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    exclude: Sequence[str] = (),
    progress: ProgressCallback | bool | None = None,
    embedder: Embedder | None = None,
    commit_every: int = config.COMMIT_EVERY,
    ray: RayOptions | None = None,
    fanout: Fanout | None = None,
    compact: bool = False,
    prune_offline: bool = False,
    background_export: bool = False,
    commit_seconds: float = config.COMMIT_SECONDS,
    fast_path: bool = True,
    keep_empty: bool = False,
) -> IndexSummary:
    """Index (or re-index, incrementally) the images under `roots` into the index at `db`.

    `precision`: fp32 (open_clip's own vectors), bf16 / fp16 (GPU) / int8 (CPU) for speed, or
    auto [default: CLIPSEARCH_PRECISION, else auto]: bf16 on CPUs with native bf16, fp16 on CUDA,
    fp32 elsewhere.
    `ray`: read, decode and embed on a Ray cluster (the extra clipsearch[ray]); `device` and
    `precision` are then the workers'. Scanning, the diff and every commit stay here, as in a
    local run. `fanout`: any other way to read, decode and embed the photos a run needs (what
    `ray` sets up; the benchmarks stub it to time the driver alone).
    `progress`: a callback hearing clipsearch.results.Progress events, or True for tqdm bars
    (a widget in a notebook, a text bar in a terminal).
    `compact`: merge the table's files and the search structures' deltas now, whatever it costs
    (a run otherwise merges them only when enough small commits piled up).
    `prune_offline`: remove the rows under a root that looks offline (missing, empty, or none of
    its indexed photos found: clipsearch.build.roots), which are otherwise kept.
    `background_export`: leave the text encoder's export for the torch-free query to a process
    of its own (clipsearch.models.exportjob) instead of making it before returning.
    `commit_every`, `commit_seconds`: a run commits what it embedded after that many photos or
    that many seconds, whichever comes first; an interrupted run loses at most that.
    `fast_path=False`: leave out what the torch-free query reads (an index no new process will
    search: it saves the text export's 10 s).
    `keep_empty`: keep a new root that holds nothing indexable yet (to watch it); otherwise it
    is named in the summary's `empty` and not kept.
    """
    if not roots:
        raise BadInputError("no folder given; say which folder to index, e.g. clipsearch index ~/Photos")
    folders = [normalize_root(r) for r in roots]
    with contextlib.ExitStack() as held:
        if progress is True:
            from clipsearch import progress as shown

            progress = held.enter_context(shown.bars())
        builder = held.enter_context(open_builder(
            db, model=model, pretrained=pretrained, device=device, precision=precision,
            batch_size=batch_size, workers=workers, progress=progress or None, embedder=embedder,
            commit_every=commit_every, ray=ray, fanout=fanout, commit_seconds=commit_seconds))
        builder.background_export, builder.fast_path = background_export, fast_path
        if background_export:
            builder.embed_images_only(owns_embedder=embedder is None)
        return builder.index(folders, exclude, compact, prune_offline, keep_empty)


def compact(db: str | os.PathLike[str] | None = None) -> CompactSummary:
    """Merge the index's table files and fold the search structures' deltas into their bases
    (`clipsearch optimize`); a run does it by itself when enough small commits piled up."""
    path = db_path(db)
    store = Store.open(path)
    with lock_dir(path):
        return Builder(store, ModelSpec.from_dict(store.manifest.model), device="cpu").compact()


def _sidecars_of_new_rows(store: Store, written: dict[str, str], summary: IndexSummary) -> None:
    """After `tag --write-xmp`, the photos an index run added or changed get their sidecars too
    (those of photos that are gone stay: other tools may own them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not written or not store.manifest.xmp_sidecars:
        return
    stored = store.read_tags()
    if stored is None:
        return
    rows = stored[0]
    rows = rows.filter(pc.is_in(rows.column("hash"), value_set=pa.array(sorted(set(written.values())))))
    tags: dict[str, list[tuple[str, float]]] = {}
    for row in rows.sort_by([("score", "descending")]).to_pylist():
        tags.setdefault(row["hash"], []).append((row["label"], row["score"]))
    images = [ImageTags(path, tags.get(digest, [])) for path, digest in sorted(written.items())]
    from clipsearch.enrich.xmp import write_sidecars

    summary.sidecars_written += write_sidecars(images, summary.skipped)


def _drop_cached(hashes: Sequence[str]) -> int:
    """Delete the cached thumbnails and re-rank features of these contents; how many files."""
    thumbnails, features = config.cache_folder(config.THUMBNAILS), config.cache_folder(config.FEATURES)
    dropped = 0
    for digest in hashes:
        for cached in (*thumbnails.glob(f"*/{digest}.*"), *thumbnails.glob(f"*/{digest}-t*.*"),
                       *features.glob(f"*/{digest}.*")):
            with contextlib.suppress(OSError):
                cached.unlink()
                dropped += 1
    return dropped


def _retag(store: Store, indexer: Indexer | None) -> None:
    """Bring the tags up to date with the table: tag new content with the labels of the last
    `tag` run (no model needed, the label vectors are stored with the tags) and forget the tags
    of content no longer indexed. After a run that started where the tags were, only what it
    changed is tagged (clipsearch.enrich.tagging.tag_new); otherwise everything is. Checked by table
    version, so a run killed between its last commit and this step is caught up by the next one."""
    from clipsearch.enrich.tagging import Tagger, tag_new, tag_store

    stored = store.read_tags(rows=False)
    if stored is None:
        return
    in_step = max(store.manifest.tags_version, stored[1].get("table_version", -1))
    if in_step == store.version:
        return
    tagger = Tagger.from_dict(stored[1])
    if indexer is not None and in_step == indexer.version_before:
        tag_new(store, tagger, list(indexer.written.values()), sorted(indexer.dropped))
    else:
        tag_store(store, tagger, per_image=False)
    store.manifest.tags_version = store.version
    store.save_manifest()
