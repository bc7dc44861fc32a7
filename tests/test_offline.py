"""A root that looks unplugged (missing, empty, none of its photos there) keeps its rows; it
comes back without embedding anything, and --prune-offline removes on purpose."""

from __future__ import annotations

import shutil

from helpers import row_paths
from typer.testing import CliRunner

from clipsearch import index_folders, open_index
from clipsearch.cli import app


def _index(embedder, folders, db, **kw):
    return index_folders(folders, db, embedder=embedder, workers=2, **kw)


def test_an_empty_folder_in_place_of_a_root_removes_nothing(embedder, photos, tmp_path):
    db, away = tmp_path / "db", tmp_path / "drive-unplugged"
    _index(embedder, [photos], db)
    indexed = row_paths(db)
    photos.rename(away)
    photos.mkdir()  # the bare mount point of a drive that is not plugged in
    run = _index(embedder, [photos], db)
    assert (run.removed, run.embedded) == (0, 0)
    assert str(photos) in run.offline and "none of its 13 indexed photos" in run.offline[str(photos)]
    assert row_paths(db) == indexed
    assert str(photos) in open_index(db).info().offline

    photos.rmdir()
    away.rename(photos)  # plugged in again
    back = _index(embedder, [photos], db)
    assert (back.embedded, back.removed, back.unchanged, back.offline) == (0, 0, 13, {})
    assert row_paths(db) == indexed and open_index(db).info().offline == {}


def test_prune_offline_removes_and_the_cli_says_so(embedder, photos, tmp_path, tiny_local_dir):
    db = tmp_path / "db"
    base = ["--db", str(db), "--model", f"local-dir:{tiny_local_dir}", "-q"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(next(photos.rglob("*.webp")), other / "kept.webp")
    assert CliRunner().invoke(app, ["index", str(photos), str(other), *base]).exit_code == 0
    for child in photos.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    r = CliRunner().invoke(app, ["index", str(photos), str(other), *base])
    assert r.exit_code == 0, r.output
    assert f"note: {photos} looks offline" in r.output and "--prune-offline" in r.output
    assert len(row_paths(db)) == 14
    r = CliRunner().invoke(app, ["info", "--db", str(db)], env={"COLUMNS": "400"})
    assert f"{photos} (offline since" in r.output
    r = CliRunner().invoke(app, ["index", str(photos), str(other), *base, "--prune-offline"])
    assert r.exit_code == 0 and "removed 13" in r.output, r.output
    assert row_paths(db) == [str(other / "kept.webp")]
