"""Indexes that exist keep working: a small index written by an earlier clipsearch (committed in
tests/data/) opens, answers exactly what that code answered, and is brought up to date in place
(the manifest's copy, checksums of its derived files) without embedding anything again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch import open_index
from clipsearch.cli.commands import app

FIXTURE = Path(__file__).parent / "data" / "index-31b40e8"


@pytest.fixture
def legacy(tmp_path) -> tuple[Path, dict]:
    db = tmp_path / "db"
    shutil.copytree(FIXTURE / "db", db)  # the committed one is never written to
    return db, json.loads((FIXTURE / "expected.json").read_text())


def _answers(db: Path) -> dict:
    index = open_index(db)
    ids = sorted(index.store.read(["id"]).column("id").to_pylist())
    return {"images": index.info().images, "tags": [[t.label, t.images] for t in index.tags()],
            "similar": {str(i): [[h.path, h.score] for h in index.similar(i, k=5)] for i in ids},
            "tagged_sky": sorted(h.path for h in index.similar(ids[0], k=20, tags=["sky"]))}


def _same(answers: dict, expected: dict) -> None:
    assert answers["images"] == expected["images"] == 13
    assert answers["tags"] == expected["tags"] and answers["tagged_sky"] == expected["tagged_sky"]
    assert answers["similar"].keys() == expected["similar"].keys()
    for row, hits in expected["similar"].items():
        assert [p for p, _ in answers["similar"][row]] == [p for p, _ in hits], row
        assert all(abs(a[1] - b[1]) < 1e-5 for a, b in zip(answers["similar"][row], hits, strict=True))


def test_an_index_from_an_earlier_release_answers_as_it_did(legacy):
    db, expected = legacy
    _same(_answers(db), expected)
    assert open_index(db).word_index() is None  # no words until an index run reads them


def test_check_brings_an_earlier_index_up_to_date_without_re_embedding(legacy):
    db, expected = legacy
    vectors = (db / "images.lance" / "data").iterdir().__next__().read_bytes()
    r = CliRunner().invoke(app, ["check", "--db", str(db), "--json", "--no-thumbnails"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    found = {i["what"]: (i["status"], i["action"]) for i in json.loads(r.stdout)["items"]}
    assert found == {"manifest copy": ("missing", "rebuilt"), "search structure": ("unrecorded", "recorded")}
    r = CliRunner().invoke(app, ["check", "--db", str(db), "--json", "--no-thumbnails"],
                           catch_exceptions=False)
    assert {i["status"] for i in json.loads(r.stdout)["items"]} == {"ok"}
    assert (db / "images.lance" / "data").iterdir().__next__().read_bytes() == vectors  # rows untouched
    _same(_answers(db), expected)
    (db / "manifest.json").write_text("{")  # and now it survives a broken manifest, as new ones do
    _same(_answers(db), expected)


def test_the_first_write_upgrades_it_in_place_without_re_embedding(legacy, tmp_path):
    """A commit by today's code keeps the earlier base of the search structure and writes a delta
    beside it (with the base's ids, read from it once); nothing indexed is embedded again."""
    import numpy as np
    from test_change import stub

    from clipsearch.build.builder import open_builder
    from clipsearch.store.table import Store

    db, expected = legacy
    base = (db / "ann" / "faiss-v2.index").read_bytes()
    dim = Store.open(db).manifest.dim
    new = tmp_path / "new"
    new.mkdir()
    for i in range(2):
        (new / f"{i}.jpg").write_bytes(bytes([i]) * 64)
    asked: list[str] = []

    def fanout(paths, known):
        asked.extend(paths)
        return stub(dim)(paths, known)

    with open_builder(db, fanout=fanout, workers=0) as builder:
        first = builder.index([str(new)])
        assert first.added == 2 and first.words_filled == 13  # its rows got their words, unembedded
        for f in new.iterdir():
            f.unlink()
        assert builder.index([str(new)], prune_offline=True).removed == 2  # emptied on purpose
    assert sorted(asked) == [str(new / "0.jpg"), str(new / "1.jpg")]  # the new photos only
    assert (db / "ann" / "faiss-v2.index").read_bytes() == base
    assert np.load(db / "ann" / "faiss-v2.ids.npy").tolist() == sorted(
        Store.open(db).read(["id"]).column("id").to_pylist())
    assert len(list((db / "ann").glob("delta-v*.npz"))) == 1
    _same(_answers(db), expected)
    index = open_index(db)  # now its photos' names and folders are words too (no model to query here)
    positions, _ = index.word_index().scores(["rocket"])
    (rocket,) = index.records(index.word_index().ids[positions].tolist()).values()
    assert rocket.path.endswith("/space/rocket.jpg")
    assert json.loads((db / "manifest.json").read_text())["schema_version"] == 2
