"""Environment faults: unreadable files, a read-only index, a full disk, a damaged table. Each
gives a one-line message that says what to do, and never costs what was already indexed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import row_paths
from PIL import Image
from test_cli import _script
from typer.testing import CliRunner

from clipsearch import index_folders, open_index
from clipsearch.cli.commands import app
from clipsearch.errors import CorruptIndexError, IndexWriteError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` run so that file permissions apply to it: as root, without the capabilities that
    let root read and write anything (root owns the files, so their mode bits decide)."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    wrapped = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] if setpriv else []
    if not wrapped or subprocess.run([*wrapped, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and root's permission override cannot be dropped here")
    return [*wrapped, *cmd]


def _cli(*args, privileged=False) -> subprocess.CompletedProcess:
    cmd = [_script(), *map(str, args)]
    return subprocess.run(cmd if privileged else _unprivileged(cmd), capture_output=True, text=True,
                          env=ENV, timeout=300)


def _read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(mode & ~0o222)


@pytest.fixture
def indexed(photos, tmp_path, tiny_local_dir):
    """sample_images indexed with weights any fresh process can load (an open_clip folder)."""
    db = tmp_path / "db"
    index_folders([photos], db, model=f"local-dir:{tiny_local_dir}", device="cpu")
    return photos, db


def test_an_unreadable_photo_is_skipped_with_the_fix(photos, tmp_path, tiny_local_dir):
    locked = photos / "travel" / "china.jpg"
    locked.chmod(0)
    r = _cli("index", photos, "--db", tmp_path / "db", "--model", f"local-dir:{tiny_local_dir}", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["added"] == 12, json.dumps(summary)
    reason = "permission denied; make the file readable"
    assert summary["skipped"] == [{"path": str(locked), "reason": reason}]


def test_a_read_only_index_refuses_writes_and_still_searches(indexed, tiny_local_dir):
    photos, db = indexed
    Image.open(photos / "travel" / "flower.jpg").rotate(90).save(photos / "new.png")
    before = sorted(p.relative_to(db) for p in db.rglob("*"))
    for ann in (db / "ann").glob("*.index"):
        ann.unlink()  # the search structure must then be rebuilt in memory
    _read_only(db)
    try:
        r = _cli("index", photos, "--db", db)
        assert r.returncode == 1
        assert r.stderr.startswith(f"error: cannot write to the index at {db}: permission denied; make the "
                                   "folder writable, or index into another --db")
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr

        r = _cli("search", "a cat", "--db", db, "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)) == 10
        assert json.loads(_cli("info", "--db", db, "--json").stdout)["images"] == 13
        r = _cli("tag", "--db", db, "--labels", "cat,dog")
        assert r.returncode == 1 and "cannot write to the index" in r.stderr
    finally:
        for path in [db, *db.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert sorted(p.relative_to(db) for p in db.rglob("*") if p.parent.name != "ann") == [
        p for p in before if p.parent.name != "ann"]  # nothing was written


@contextlib.contextmanager
def _small_disk(tmp_path: Path, size: str):
    """A real tmpfs of `size`, where this machine lets the tests mount one."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]
    if os.geteuid() != 0 or subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip("mounting a small file system needs root and mount rights")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_with_a_message_and_keeps_what_was_committed(tmp_path, embedder, many_photos):
    with _small_disk(tmp_path, "80k") as disk:
        db = disk / "db"
        with pytest.raises(IndexWriteError) as err:
            index_folders([many_photos], db, embedder=embedder, workers=0, commit_every=32)
        assert str(err.value).startswith(f"cannot write to the index at {db}: the disk is full (no space "
                                         "left on device); free some space; everything committed before")
        kept = row_paths(db)  # the index opens, holding whole commits only
        assert len(kept) == len(set(kept)) and len(kept) % 32 == 0 and len(kept) < 300
        assert open_index(db, embedder=embedder).info().images == len(kept)

        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)  # space freed
        summary = index_folders([many_photos], db, embedder=embedder, workers=0)
        assert (summary.added, summary.unchanged) == (300 - len(kept), len(kept))
        assert len(set(row_paths(db))) == len(row_paths(db)) == 300


def test_a_write_error_in_the_table_layer_is_reported_and_resumable(tmp_path, embedder, many_photos,
                                                                   monkeypatch):
    """The same fault injected where LanceDB writes, for machines that cannot mount a small disk."""
    import lancedb.table

    real_add = lancedb.table.LanceTable.add
    calls = []

    def add_then_fail(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("lance error: LanceError(IO): No space left on device (os error 28), "
                               "lance-file/src/writer.rs:191:9")
        return real_add(self, *args, **kwargs)

    db = tmp_path / "db"
    monkeypatch.setattr(lancedb.table.LanceTable, "add", add_then_fail)
    with pytest.raises(IndexWriteError) as err:
        index_folders([many_photos], db, embedder=embedder, workers=0, commit_every=32)
    monkeypatch.undo()
    assert "the disk is full (no space left on device)" in str(err.value)
    assert len(row_paths(db)) == 64  # the two commits before the failure
    summary = index_folders([many_photos], db, embedder=embedder, workers=0)
    assert (summary.added, summary.unchanged) == (236, 64)
    assert len(set(row_paths(db))) == len(row_paths(db)) == 300


@pytest.mark.parametrize("damage", ["data file deleted", "data file truncated", "versions deleted"])
def test_a_damaged_table_names_its_path_and_what_to_do(indexed, damage):
    _, db = indexed
    table = db / "images.lance"
    if damage == "versions deleted":
        shutil.rmtree(table / "_versions")
    else:
        (data,) = (table / "data").glob("*.lance")
        if damage == "data file deleted":
            data.unlink()
        else:
            data.write_bytes(data.read_bytes()[:100])
    r = CliRunner().invoke(app, ["search", "a cat", "--db", str(db)], catch_exceptions=False)
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith(f"error: the image table in {db}")
    assert f"move {db} aside" in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    with pytest.raises(CorruptIndexError):
        open_index(db).store.read(["path"])
