"""Re-indexing touches only what changed, recognises moves, and survives interruption."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import sample_files
from helpers import reference_image_vectors, row_paths, stored_vectors
from PIL import Image

from clipsearch import index_folders, open_index
from clipsearch.errors import IndexInterrupted
from clipsearch.store.table import Store


def _index(embedder, photos, db, **kw):
    return index_folders([photos], db, embedder=embedder, workers=2, **kw)


def test_second_run_over_unchanged_folder_embeds_nothing(embedder, photos, tmp_path):
    db = tmp_path / "db"
    first = _index(embedder, photos, db)
    assert (first.added, first.embedded) == (13, 13)
    version = Store.open(db).version
    again = _index(embedder, photos, db)
    assert (again.added, again.updated, again.removed, again.embedded) == (0, 0, 0, 0)
    assert again.unchanged == 13
    assert Store.open(db).version == version  # nothing was written


def test_new_modified_moved_deleted_and_touched_files(embedder, photos, tmp_path):
    db = tmp_path / "db"
    _index(embedder, photos, db)
    before = stored_vectors(db)

    new = photos / "food" / "coffee_copy_flipped.png"
    Image.open(photos / "food" / "coffee.webp").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new)
    modified = photos / "space" / "astronaut.jpg"
    Image.open(modified).rotate(90).save(modified, quality=90)
    moved_from, moved_to = photos / "travel" / "china.jpg", photos / "archive" / "china-2011.jpg"
    moved_to.parent.mkdir()
    shutil.move(moved_from, moved_to)
    deleted = photos / "textures" / "grass.png"
    deleted.unlink()
    touched = photos / "misc" / "camera.bmp"
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))

    s = _index(embedder, photos, db)
    assert (s.added, s.updated, s.moved, s.removed, s.embedded) == (1, 1, 1, 1, 2)
    assert s.unchanged == 10  # 9 untouched + the touched one, recognised by its hash
    after = stored_vectors(db)
    assert sorted(after) == sorted(str(p) for p in sample_files(photos))
    # the moved file kept its vector without re-embedding; new and modified match open_clip
    np.testing.assert_array_equal(after[str(moved_to)], before[str(moved_from)])
    np.testing.assert_allclose(
        np.stack([after[str(new)], after[str(modified)]]),
        reference_image_vectors(embedder, [new, modified]), atol=1e-5)
    assert not np.allclose(after[str(modified)], before[str(modified)])
    assert Store.open(db).row(str(touched), ["mtime_ns"])["mtime_ns"] == 1_000_000_000
    # and search agrees with the table: the deleted file is gone, the moved one found at its new path
    hits = open_index(db, embedder=embedder).similar(moved_to, k=20)
    assert hits[0].path == str(moved_to)
    assert str(deleted) not in {h.path for h in hits}
    assert len(hits) == 13


def test_copies_reuse_the_stored_vector(embedder, photos, tmp_path):
    db = tmp_path / "db"
    _index(embedder, photos, db)
    shutil.copy(photos / "animals" / "horse.png", photos / "animals" / "horse-copy.png")
    s = _index(embedder, photos, db)
    assert (s.added, s.embedded) == (1, 0)
    v = stored_vectors(db)
    np.testing.assert_array_equal(v[str(photos / "animals" / "horse-copy.png")],
                                  v[str(photos / "animals" / "horse.png")])


def test_swapped_file_names_get_the_right_vectors(embedder, photos, tmp_path):
    db = tmp_path / "db"
    _index(embedder, photos, db)
    a, b, tmp = photos / "travel" / "china.jpg", photos / "travel" / "flower.jpg", photos / "t.jpg"
    before = stored_vectors(db)
    shutil.move(a, tmp)
    shutil.move(b, a)
    shutil.move(tmp, b)
    _index(embedder, photos, db, commit_every=1)
    after = stored_vectors(db)
    np.testing.assert_allclose(after[str(a)], before[str(b)], atol=1e-6)
    np.testing.assert_allclose(after[str(b)], before[str(a)], atol=1e-6)


def test_only_the_indexed_root_is_pruned(embedder, photos, tmp_path):
    db = tmp_path / "db"
    index_folders([photos / "space"], db, embedder=embedder)
    index_folders([photos / "travel"], db, embedder=embedder)
    assert len(row_paths(db)) == 5
    (photos / "travel" / "flower.jpg").unlink()
    s = index_folders([photos / "travel"], db, embedder=embedder)
    assert s.removed == 1
    assert len(row_paths(db)) == 4  # the space/ rows were not touched
    assert open_index(db).info().roots == sorted([str(photos / "space"), str(photos / "travel")])


def test_a_skipped_file_keeps_its_existing_row(embedder, photos, tmp_path):
    db = tmp_path / "db"
    _index(embedder, photos, db)
    broken = photos / "space" / "rocket.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    s = _index(embedder, photos, db)
    assert [x.path for x in s.skipped] == [str(broken)]
    assert "truncated" in s.skipped[0].reason
    assert str(broken) in row_paths(db)  # nothing indexed is lost to a bad read


@pytest.mark.parametrize("stop_after", [1, 5, 12])
def test_interrupted_run_resumes_without_duplicates_or_loss(embedder, photos, tmp_path, stop_after):
    db = tmp_path / "db"

    def interrupt(p):
        if p.phase == "embed" and p.done == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(IndexInterrupted) as stopped:
        _index(embedder, photos, db, batch_size=2, commit_every=2, progress=interrupt)
    committed = row_paths(db)
    assert stopped.value.saved == len(committed)
    assert "run the same command again to resume" in str(stopped.value)
    index = open_index(db, embedder=embedder)
    assert index.info().images == len(committed)  # opens and searches after the interruption
    assert len(index.similar(photos / "space" / "astronaut.jpg", k=50)) == len(committed)

    s = _index(embedder, photos, db)
    assert s.unchanged == len(committed)
    assert s.added == 13 - len(committed)
    paths = row_paths(db)
    assert paths == sorted(str(p) for p in sample_files(photos))  # one row each, no duplicates
    vectors = stored_vectors(db)
    files = sample_files(photos)
    np.testing.assert_allclose(np.stack([vectors[str(p)] for p in files]),
                               reference_image_vectors(embedder, files), atol=1e-5)


def test_row_ids_are_never_handed_out_twice(photos, tmp_path, embedder):
    """The search structure is updated by row id, so a deleted row's id must not come back."""
    db = tmp_path / "db"
    index_folders([photos], db, embedder=embedder, workers=0)
    rows = Store.open(db).read(["id", "path"]).to_pydict()
    newest = rows["path"][rows["id"].index(max(rows["id"]))]
    os.unlink(newest)
    index_folders([photos], db, embedder=embedder, workers=0)  # the highest id is gone now
    Image.open(photos / "animals" / "horse.png").rotate(45).save(photos / "new.png")
    Image.open(photos / "space" / "rocket.jpg").rotate(45).save(photos / "rocket again.jpg")
    index_folders([photos], db, embedder=embedder, workers=0)
    after = Store.open(db).read(["id", "path"]).to_pydict()
    new_ids = [i for i, p in zip(after["id"], after["path"], strict=True)
               if p.endswith(("again.jpg", "new.png"))]
    assert len(new_ids) == 2 and min(new_ids) > max(rows["id"])
