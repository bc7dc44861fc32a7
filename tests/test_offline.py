"""A root that looks unplugged (missing, empty, none of its photos there) keeps its rows; it
comes back without embedding anything, and --prune-offline removes on purpose."""

from __future__ import annotations

import json
import shutil

from helpers import row_paths
from test_derived import _on_small_volume, needs_root
from typer.testing import CliRunner

from clipsearch import index_folders, open_index
from clipsearch.cli.commands import app


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
    # a long root is folded where the terminal is narrow (under pytest-xdist COLUMNS is not read)
    folded = "".join(line.strip(" │") for line in r.output.splitlines()).replace(" ", "")
    assert f"{photos}(offlinesince" in folded, r.output
    r = CliRunner().invoke(app, ["index", str(photos), str(other), *base, "--prune-offline"])
    assert r.exit_code == 0 and "removed 13" in r.output, r.output
    assert row_paths(db) == [str(other / "kept.webp")]


def test_a_removed_photo_that_comes_back_within_the_retention_is_not_embedded(embedder, photos, tmp_path,
                                                                           monkeypatch):
    db, away = tmp_path / "db", tmp_path / "away"
    _index(embedder, [photos], db)
    indexed = row_paths(db)
    (photos / "food").rename(away)  # moved out of the library ...
    assert _index(embedder, [photos], db).removed == 1
    (away).rename(photos / "food")  # ... and back a run later
    back = _index(embedder, [photos], db)
    assert (back.added, back.embedded) == (1, 0) and row_paths(db) == indexed
    monkeypatch.setenv("CLIPSEARCH_KEEP_REMOVED_DAYS", "0")  # kept no more
    (photos / "food").rename(away)
    _index(embedder, [photos], db)
    (away).rename(photos / "food")
    assert _index(embedder, [photos], db).embedded == 1


def test_forget_removes_a_photo_for_good(embedder, photos, tmp_path, tiny_local_dir, monkeypatch):
    db, cache = tmp_path / "db", tmp_path / "cache"
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(cache))
    _index(embedder, [photos], db)
    coffee = photos / "food" / "coffee.webp"
    digest = open_index(db).store.row(str(coffee), ["hash"])["hash"]
    thumb = cache / "thumbnails" / "256" / f"{digest}.webp"
    moment = thumb.with_name(f"{digest}-t1.00.webp")  # a video's moment has its own thumbnail
    thumb.parent.mkdir(parents=True)
    thumb.write_bytes(b"a cached thumbnail")
    moment.write_bytes(b"a moment's thumbnail")
    import pyarrow as pa

    from clipsearch.store.kept import Kept
    from clipsearch.store.table import CAPTIONS_SCHEMA, Store

    caption = {"hash": digest, "caption": "a cup", "model": "m", "identity": "i", "precision": "fp32"}
    Store.open(db).add_captions(pa.Table.from_pylist([caption], CAPTIONS_SCHEMA))
    r = CliRunner().invoke(app, ["forget", str(photos / "food"), "--db", str(db)])
    assert r.exit_code == 0 and "forgot 1 photo, their kept vectors and 2 cached files" in r.output, r.output
    assert "still on disk" in r.output and str(coffee) not in row_paths(db)
    assert not thumb.exists() and not moment.exists()
    captions = Store.open(db).read_captions()  # none left, or none of this photo's
    assert captions is None or digest not in captions.column("hash").to_pylist()

    assert digest not in Kept(Store.open(db))
    back = _index(embedder, [photos], db)  # nothing kept: embedded again
    assert (back.added, back.embedded) == (1, 1)


def test_a_library_moved_to_a_new_disk_is_re_pointed_without_embedding(embedder, photos, tmp_path):
    db, moved = tmp_path / "db", tmp_path / "new-disk" / "Library"
    _index(embedder, [photos], db)
    before = {p: h for p, h in _rows(db).items()}
    moved.parent.mkdir()
    photos.rename(moved)
    (moved / "food" / "coffee.webp").touch()  # one file's time changed on the way: hashed, not embedded
    r = CliRunner().invoke(app, ["roots", "move", str(photos), str(moved), "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)  # each photo counted once, the touched one too (same content)
    assert (summary["moved"], summary["added"], summary["unchanged"], summary["removed"]) == (13, 0, 0, 0)
    assert summary["embedded"] == 0
    assert _rows(db) == {str(moved) + p[len(str(photos)):]: h for p, h in before.items()}
    assert open_index(db).info().roots == [str(moved)]
    (hit,) = open_index(db).search("library", k=1)  # its folder words say where it is now
    assert hit.words == {"folder": ["library"]} and hit.path.startswith(str(moved))
    assert open_index(db).search(photos.name, k=1)[0].words is None
    r = CliRunner().invoke(app, ["roots", "move", str(photos), str(moved), "--db", str(db)])
    assert r.exit_code == 2 and "holds nothing under" in r.output


def test_moving_a_root_onto_one_already_indexed_leaves_one_row_a_path(embedder, photos, tmp_path):
    """`rsync -a` the library to its new place, index that, then say it moved: each photo is still
    one row, and the next run finds every one unchanged."""
    db, copy = tmp_path / "db", tmp_path / "nas" / "Library"
    _index(embedder, [photos], db)
    shutil.copytree(photos, copy)  # copy2: sizes and times as the originals', as rsync -a keeps them
    _index(embedder, [photos, copy], db)
    r = CliRunner().invoke(app, ["roots", "move", str(photos), str(copy), "--db", str(db)])
    assert r.exit_code == 0, r.output
    paths = row_paths(db)
    assert len(paths) == len(set(paths)) == 13 and all(p.startswith(str(copy)) for p in paths), paths
    again = _index(embedder, [copy], db)
    assert (again.added, again.removed, again.unchanged) == (0, 0, 13)
    hits = [h.path for h in open_index(db).search("food", k=30)]
    assert len(hits) == len(set(hits)) == 13  # no photo shows twice


def test_a_folder_link_whose_drive_is_away_keeps_its_rows(embedder, photos, tmp_path):
    """`~/Photos/NAS -> /mnt/nas` with the share not there: the link's rows stay, the run says
    why, and they come back without embedding; with --prune-offline they go on purpose."""
    db, nas = tmp_path / "db", tmp_path / "mnt" / "nas"
    nas.mkdir(parents=True)
    for name in ("astronaut.jpg", "rocket.jpg"):
        (photos / "space" / name).rename(nas / name)
    (photos / "NAS").symlink_to(nas, target_is_directory=True)
    first = _index(embedder, [photos], db)
    assert first.added == 13
    away = tmp_path / "elsewhere"
    nas.rename(away)  # unmounted: the link points nowhere
    run = _index(embedder, [photos], db)
    assert (run.removed, run.offline) == (0, {str(photos / "NAS"): run.offline[str(photos / "NAS")]})
    assert run.offline[str(photos / "NAS")].startswith("it links to a folder that is missing")
    assert len(row_paths(db)) == 13
    nas.mkdir()  # mounted again, empty: still away
    assert _index(embedder, [photos], db).removed == 0
    nas.rmdir()
    away.rename(nas)
    back = _index(embedder, [photos], db)
    assert (back.added, back.removed, back.embedded, back.offline) == (0, 0, 0, {})
    nas.rename(away)
    assert _index(embedder, [photos], db, prune_offline=True).removed == 2


@needs_root
def test_a_nested_mount_whose_drive_is_away_keeps_its_rows(photos, tmp_path, tiny_local_dir):
    """A drive mounted inside the library (not a link): unmounted, it is an empty folder on the
    library's own disk, which the index remembers was a drive of its own."""
    nas = photos / "nas"
    steps = _on_small_volume(tmp_path, "8m", f"""
        mkdir -p {nas} && mount -t tmpfs -o size=8m tmpfs {nas} && cp -p {photos}/space/* {nas}/ || exit 98
        step index cs index {photos} --db {tmp_path}/db --model local-dir:{tiny_local_dir} --json -q
        umount {nas}
        step again cs index {photos} --db {tmp_path}/db --json
        """, fast=False)
    code, out, err = steps["index"]
    assert code == 0, err
    assert json.loads(out)["added"] == 13 + 3
    code, out, err = steps["again"]
    assert code == 0, err
    again = json.loads(out)
    assert again["removed"] == 0 and list(again["offline"]) == [str(nas)], again
    assert "it was a drive of its own when indexed, and it is empty" in again["offline"][str(nas)]
    assert f"note: {nas} looks offline" in err
    assert len(row_paths(tmp_path / "db")) == 16


def _rows(db):
    from clipsearch.store.table import Store

    table = Store.open(db).read(["path", "hash"])
    return dict(zip(table.column("path").to_pylist(), table.column("hash").to_pylist(), strict=True))


def test_exclusions_last_and_a_root_can_be_removed(embedder, photos, tmp_path, tiny_local_dir):
    """--exclude is kept by the index (a later run, a watcher, forget's advice all honour it),
    `roots` lists it, `roots include` takes it back, `roots remove` drops a root and its rows."""
    db = tmp_path / "db"
    _index(embedder, [photos], db, exclude=["*/space/*"])
    assert not any("/space/" in p for p in row_paths(db))
    assert _index(embedder, [photos], db).added == 0  # no --exclude this time: still left out
    listed = CliRunner().invoke(app, ["roots", "--db", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == {"roots": [{"path": str(photos), "offline_since": None}],
                                         "exclude": ["*/space/*"]}
    assert "left out: */space/*" in CliRunner().invoke(app, ["roots", "--db", str(db)]).output
    r = CliRunner().invoke(app, ["roots", "include", "*/space/*", "--db", str(db)])
    assert r.exit_code == 0 and "run clipsearch index to add what it left out" in r.output, r.output
    assert _index(embedder, [photos], db).added == 3
    r = CliRunner().invoke(app, ["roots", "include", "*/space/*", "--db", str(db)])
    assert r.exit_code == 2 and "is not an exclusion of this index" in r.output, r.output
    other = tmp_path / "scans"
    shutil.copytree(photos / "food", other)
    _index(embedder, [other], db)
    r = CliRunner().invoke(app, ["roots", "remove", str(photos), "--db", str(db), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == 13, r.output
    assert all(p.startswith(str(other)) for p in row_paths(db))
    assert open_index(db).info().roots == [str(other)]
    r = CliRunner().invoke(app, ["roots", "remove", str(photos), "--db", str(db)])
    assert r.exit_code == 2 and f"{photos} is not a root of this index; its roots: {other}" in r.output
    assert (photos / "space" / "rocket.jpg").exists()  # files are never touched
