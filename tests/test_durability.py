"""What survives a power cut, a bad disk or a hand edit: folder syncs after durable renames, and
the manifest's second copy."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from typer.testing import CliRunner

from clipsearch import files
from clipsearch.cli.commands import app
from clipsearch.errors import CorruptIndexError
from clipsearch.store.table import MANIFEST, MANIFEST_COPY, Manifest, Store


def test_a_durable_replace_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file",
                       os.path.exists(tmp_path / "target")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with files.replacing(tmp_path / "target", durable=True) as tmp, open(tmp, "w") as f:
        f.write("new")
    # the file's bytes before the rename, the folder (holding the rename) after it
    assert synced == [("file", False), ("folder", True)]
    synced.clear()
    with files.replacing(tmp_path / "other") as tmp, open(tmp, "w") as f:
        f.write("cheap")
    assert synced == []  # only durable writes pay for syncing


@pytest.fixture
def db(sample_index, tmp_path):
    copy = tmp_path / "db"
    shutil.copytree(sample_index, copy)
    return copy


def _search(db, *args):
    r = CliRunner().invoke(app, ["search", "a horse", "--db", str(db), "--json", "-k", "3", *args],
                           catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_a_damaged_manifest_is_restored_from_its_copy(db):
    before = _search(db)
    assert before[0] == 0 and (db / MANIFEST_COPY).read_bytes() == (db / MANIFEST).read_bytes()
    good = (db / MANIFEST).read_bytes()
    (db / MANIFEST).write_bytes(good[:40] + b"\x00garbage")  # a bad sector, a hand edit
    code, out, err = _search(db)
    assert code == 0 and out == before[1]
    assert err.strip() == (f"note: the index manifest {db / MANIFEST} was damaged or missing; restored "
                           f"it from its copy {MANIFEST_COPY}")
    assert json.loads((db / MANIFEST).read_bytes()) == json.loads(good)
    assert _search(db)[2] == ""  # restored once: the next search has nothing to say
    (db / MANIFEST).unlink()
    assert _search(db)[:2] == before[:2] and (db / MANIFEST).is_file()


def test_a_copy_one_write_behind_never_hands_out_an_id_twice(db):
    store = Store.open(db)
    highest = store.highest_id()
    behind = Manifest.read(db / MANIFEST)
    behind.next_id = 3  # the copy as it was before the last run's rows
    behind.write(db / MANIFEST_COPY, copy=False)
    (db / MANIFEST).write_text("{ half a manifest")
    assert Store.open(db).manifest.next_id == highest + 1
    assert Manifest.read(db / MANIFEST).next_id == highest + 1


def test_an_index_with_neither_manifest_is_refused_with_the_reason(db):
    (db / MANIFEST).write_text("[]")
    (db / MANIFEST_COPY).write_text("not json")
    with pytest.raises(CorruptIndexError, match=r"index manifest .*manifest.json is unreadable"):
        Store.open(db)
    code, out, err = _search(db)
    assert code != 0 and out == "" and err.startswith("error: index manifest")
