"""The index on disk: manifest versions, the derived FAISS file, the writer lock."""

from __future__ import annotations

import json

import pytest

from clipsearch import index_folders, open_index
from clipsearch.errors import IndexBusyError, SchemaVersionError
from clipsearch.store.table import MANIFEST, lock_dir


@pytest.fixture
def db(embedder, photos, tmp_path):
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder)
    return db


def _ann_files(db):
    return sorted((db / "ann").glob("faiss-v*.index"))


def test_index_from_a_newer_schema_is_refused(db):
    manifest = json.loads((db / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (db / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match="written by a newer clipsearch .* upgrade clipsearch"):
        open_index(db)


def test_faiss_file_is_saved_once_per_table_version(db, embedder, photos):
    files = _ann_files(db)
    assert len(files) == 1
    index_folders([photos], db, embedder=embedder)  # nothing changed: same file
    assert _ann_files(db) == files
    (photos / "travel" / "china.jpg").unlink()
    index_folders([photos], db, embedder=embedder)
    # the base stays; the change is a delta named after the new version, the one a search reads
    assert _ann_files(db) == files
    (delta,) = (db / "ann").glob("delta-v*.npz")
    assert delta.stat().st_size < 4096
    index_folders([photos], db, embedder=embedder, compact=True)  # folded into a new base
    assert len(_ann_files(db)) == 1 and _ann_files(db) != files and not list((db / "ann").glob("delta-v*"))
    hits = open_index(db, embedder=embedder).search("a cat", k=20)
    assert len(hits) == 12 and "china.jpg" not in {h.path.rsplit("/", 1)[1] for h in hits}


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_missing_or_damaged_faiss_file_is_rebuilt_from_the_table(db, embedder, photos, damage):
    expected = [h.path for h in open_index(db, embedder=embedder).search("a cat", k=13)]
    (ann,) = _ann_files(db)
    if damage == "delete":
        ann.unlink()
    elif damage == "truncate":
        ann.write_bytes(ann.read_bytes()[:50])
    else:
        ann.write_bytes(b"\x00" * 4096)
    hits = open_index(db, embedder=embedder).search("a cat", k=13)
    assert [h.path for h in hits] == expected
    assert len(_ann_files(db)) == 1 and _ann_files(db)[0].stat().st_size > 13 * 32 * 4


def test_a_second_writer_is_refused_while_one_indexes(db, embedder, photos):
    with lock_dir(db), pytest.raises(IndexBusyError, match="is writing to the index at"):
        index_folders([photos], db, embedder=embedder)
    # and once the first writer is done, indexing works again
    assert index_folders([photos], db, embedder=embedder).unchanged == 13


def test_paths_with_quotes_are_found_by_similar(db, embedder, photos):
    quoted = photos / "misc" / "o'clock \"motion\".gif"
    (photos / "misc" / "clock_motion.gif").rename(quoted)
    index_folders([photos], db, embedder=embedder)
    hits = open_index(db, embedder=embedder).similar(quoted, k=1)
    assert hits[0].path == str(quoted)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_index_files_are_readable_by_whoever_may_read_the_folder(db):
    """Files are replaced through a private temporary file; the result must not stay private
    (0600), or other users of a shared index could not search it."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for path in [db / MANIFEST, *_ann_files(db)]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
